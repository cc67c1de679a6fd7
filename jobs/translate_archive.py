"""Translate a SAR archive as a Ray job: the same arguments as `s2o translate`.

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/translate_archive.py s3://bucket/sentinel1/ --model s3://bucket/runs/acd/bundle \\
            --out s3://bucket/optical/ --actors 8 --batch-size 64

Inside a Ray job RAY_ADDRESS is set, so the pipeline runs on that cluster (one GPU per model actor
where it has GPUs). Submitting again with the same --out skips the scenes already done.
"""

import sys

from s2o_platform.cli import app

if __name__ == "__main__":
    app(["translate", *sys.argv[1:]])
