#!/bin/sh
# Bound over pip, uv and their kind inside the kernels' sandbox (see sandbox.py).
echo "$(basename "$0"): not available to snippets: their env is pinned and read-only;" \
     "add the package to envs/ENV/requirements.in and lock it (python -m runner envs lock ENV)" >&2
exit 1
