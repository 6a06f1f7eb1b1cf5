"""Runs checkov (inside .venv-checkov) on each given file alone, in one process.

    .venv-checkov/bin/python tests/deploy/checkov_each.py CONFIG OUT_DIR FILE...

Each FILE's JSON report lands in OUT_DIR/<index>/results_json.json. Why not one ``checkov -f A -f B``:
checkov links pods to NetworkPolicies across every file of a run by labels, so one overlay's policy
would cover another overlay's pods. Why not one checkov process per file: its start-up (imports) costs
~6 s of CPU. So checkov is imported once and every scan runs in a fresh fork (checkov keeps graph
state between runs in one process; a fork starts each scan from the clean, just-imported state).
"""

import os
import sys

from checkov.main import Checkov


def main() -> int:
    config, out_dir, *files = sys.argv[1:]
    for i, path in enumerate(files):
        report_dir = os.path.join(out_dir, str(i))
        os.makedirs(report_dir, exist_ok=True)
        pid = os.fork()
        if pid == 0:  # the child: one scan, then exit without running the parent's atexit handlers
            code = 3
            try:
                Checkov(
                    argv=["--config-file", config, "-f", path, "-o", "json", "--output-file-path", report_dir]
                ).run()
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"checkov crashed on {path}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
