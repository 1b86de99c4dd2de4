"""Writes api/openapi.json (what `GET /api/openapi.json` serves, compiled
into the binary) from docs/openapi.yaml, the document people edit.

usage: python scripts/openapi.py          # regenerate
       python scripts/openapi.py --check  # fail if api/openapi.json is stale
"""
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "openapi.yaml"
TARGET = ROOT / "api" / "openapi.json"

document = yaml.safe_load(SOURCE.read_text())
text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
if "--check" in sys.argv[1:]:
    if not TARGET.exists() or TARGET.read_text() != text:
        print("api/openapi.json is stale: run python scripts/openapi.py")
        sys.exit(1)
    print("api/openapi.json matches docs/openapi.yaml")
else:
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
