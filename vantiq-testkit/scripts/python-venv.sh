#!/usr/bin/env sh
# Creates a Python virtual environment with the published Vantiq Python connector SDK, for
# vantiq-testkit/tests/python_sdk.rs.
#
# Usage: vantiq-testkit/scripts/python-venv.sh VENV_DIR [PYTHON]
#   VENV_DIR  where to create (or reuse) the environment
#   PYTHON    the interpreter to create it with (default: python3; the SDK needs >= 3.10)
#
# VANTIQ_PY_SDK overrides the pip requirement (default: vantiqconnectorsdk, the latest
# release), e.g. VANTIQ_PY_SDK=vantiqconnectorsdk==1.3.7 to pin the version.
#
# Then run the interop test with:
#   VANTIQ_TEST_PYTHON=VENV_DIR/bin/python cargo test -p vantiq-testkit --test python_sdk
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 VENV_DIR [PYTHON]" >&2
    exit 2
fi
venv=$1
python=${2:-python3}
sdk=${VANTIQ_PY_SDK:-vantiqconnectorsdk}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$sdk"
"$venv/bin/python" -c 'import vantiqconnectorsdk, websockets; print("vantiqconnectorsdk ready:", vantiqconnectorsdk.__file__, "websockets", websockets.__version__)'
echo "VANTIQ_TEST_PYTHON=$venv/bin/python"
