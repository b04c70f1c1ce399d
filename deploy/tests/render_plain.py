#!/usr/bin/env python3
"""Write deploy/kubernetes/*.yaml: the Helm chart deploy/helm/bulkhead
rendered with its default values (plus namespace.create=true), release and
namespace `bulkhead`, by Helm's own template engine (helm-python-sdk, which
binds Helm's Go SDK). CI checks the files are current
(test_deploy.PlainManifests).

    PYTHONPATH=.tools/deploy-check-... python3 deploy/tests/render_plain.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deploy_common as common  # noqa: E402


def main() -> int:
    written = []
    for template, text in sorted(common.render_texts(common.PLAIN_VALUES).items()):
        if not common.documents(text):
            continue  # a template its values turn off (the Secret)
        name = common.plain_file_name(template)
        path = common.PLAIN / name
        path.write_text(common.PLAIN_HEADER + text.lstrip("\n"))
        written.append(name)
    print("wrote", ", ".join(written), "in", common.PLAIN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
