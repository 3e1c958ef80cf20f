"""Run the block-wise trial on a tiny saved ViT and write the ranking (used under `accelerate launch`)."""

import json
import sys

import torch

import dcvit
from dcvit.config import CompressConfig
from dcvit.driver import compress

model_dir, data_file, workdir, out = sys.argv[1:5]
torch.set_num_threads(1)
model = dcvit.load(model_dir)
images = torch.load(data_file, weights_only=True)  # a tensor file written by the test itself
data = torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
config = CompressConfig(epochs=2, batch_size=8, synth_images=8, synth_iterations=5, structure="dcvit", progress=False)
result = compress(model, 0.7, data, config, workdir=workdir)
if result.model is not None:
    with open(out, "w") as f:
        json.dump(
            {
                "ranking": sorted(result.scores, key=lambda b: (result.scores[b], b)),
                "scores": result.scores,
                "blocks": list(result.blocks),
            },
            f,
        )
