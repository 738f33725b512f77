"""A tour of the Python API, notebook style (each `# %%` is a cell in Jupyter or VS Code).

    python examples/api_tour.py

Runs two models against one attack on a few images of the built-in dataset (generated on
first use, a few minutes) and writes results/api_tour.h5 under the current folder. Only
`import benchmark` is used: nothing here reaches into the package's modules.

Other data, for a quick try: TOUR_DATASET (a dataset name or folder:PATH), TOUR_DATA_ROOT,
TOUR_SPLIT, TOUR_LIMIT (images) in the environment.
"""

# %% Setup
import os

import torch

import benchmark

DATASET = os.environ.get("TOUR_DATASET", "builtin")
DATA_ROOT = os.environ.get("TOUR_DATA_ROOT")  # None: where the dataset's card says
SPLIT = os.environ.get("TOUR_SPLIT")  # None: the test split where there is one
LIMIT = int(os.environ.get("TOUR_LIMIT", "8"))
print("benchmark", benchmark.__version__)

# %% What is there: models (pyiqa metrics, the zoo, plugins), attacks, datasets
models = benchmark.list_models()
print(len(models), "models; the zoo:", [m for m in models if m.endswith("-builtin")])
print("attacks:", benchmark.list_attacks())
print("datasets:", benchmark.list_datasets())

# %% One model, one attack, by hand: images are (N, 3, H, W) tensors in [0, 1]
model = benchmark.create_model("cnniqa-builtin")
attack = benchmark.create_attack("ifgsm", eps="4/255", steps=3)  # direction "up": inflate
x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
x_adv = attack.perturb(model, x)
print("quality clean   ", model.quality(x).tolist())
print("quality attacked", model.quality(x_adv).tolist())
print("max |delta|     ", float((x_adv - x).abs().max()), "<=", 4 / 255)

# %% A run: what `python -m benchmark run` does, stored cell by cell (run it again: resumes)
result = benchmark.run(
    models=["cnniqa-builtin", "ssim"],
    attacks="fgsm",
    eps="4/255",
    dataset=DATASET,
    data_root=DATA_ROOT,
    split=SPLIT,
    limit=LIMIT,
    out="results/api_tour.h5",
    batch_size=4,
    progress=False,
)
print(
    f"{len(result.report.computed)} cell(s) computed, {len(result.report.skipped)} already"
    f" stored, in {result.report.wall_s:.1f} s -> {result.path}"
)

# %% The ranking: the worst attack per model and threat model, lower gain = more robust
board = benchmark.leaderboard(result.path)
print(board[["model", "eps_label", "worst_attack", "abs_gain", "srocc_clean", "rank"]].to_string())

# %% Every image: raw scores, quality-up scores, distances; the gain is their mean difference
frame = benchmark.load_results(result.path)
frame["gain"] = frame["quality_attacked"] - frame["quality_clean"]
print(
    frame[["model", "image_id", "mos", "quality_clean", "quality_attacked", "psnr"]]
    .head()
    .to_string()
)
print(frame.groupby("model")["gain"].mean())
