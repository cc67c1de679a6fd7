"""Ingest as a Ray job: the same arguments as `s2o data ingest`.

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/ingest.py s3://bucket/sen12 --out s3://bucket/stores/sen12 --config configs/paper/ingest.yaml

Inside a Ray job RAY_ADDRESS is set, so the ingest runs on that cluster.
"""

import sys

from s2o_platform.cli import app

if __name__ == "__main__":
    app(["data", "ingest", *sys.argv[1:]])
