"""Evaluation: quality (PSNR, SSIM, colour error, FID) and speed (latency, throughput, speed-ups) of
bundles on the same test tiles and seeds, written as report.json, report.md and plots.

    spec.py      NAME=BUNDLE[@SAMPLER:STEPS,...] settings (pure)
    quality.py   per-tile scores and FID feature moments (pure torch + torchmetrics)
    speed.py     device/dtype choice and timing (synchronised on GPU)
    report.py    rows, speed-ups, report.json / report.md / console table / plots
    runner.py    `s2o eval`: in-process over a store's split
    distributed.py  the same quality pass over Ray Data actors (jobs/evaluate.py)
"""
