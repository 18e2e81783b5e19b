#!/usr/bin/env bash
# Put transformers' own test suite (the tests/ folder of the PyPI sdist of the installed version) under DIR/tests,
# for tests/test_transformers_common.py:
#   bash tests/fetch_transformers_tests.sh DIR && TRANSFORMERS_TESTS_DIR=DIR python -m pytest tests/test_transformers_common.py
# Those tests also need `parameterized` (pip install parameterized).
set -euo pipefail
dest="${1:?usage: $0 DIR}"
python="${PYTHON:-python}"
version="$("$python" -c 'import transformers; print(transformers.__version__)')"
mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --no-binary :all: --dest "$dest" "transformers==$version"
tar -xzf "$dest/transformers-$version.tar.gz" -C "$dest" --strip-components=1 "transformers-$version/tests"
rm "$dest/transformers-$version.tar.gz"
echo "transformers $version tests in $dest/tests"
