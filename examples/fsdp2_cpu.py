"""FSDP2 (``torch.distributed.fsdp.fully_shard``) training of an EAGLE model on CPUs, over gloo.

The Trainer cannot do this (accelerate only enables FSDP for GPU launches and runs a CPU launch
as DDP), but the model itself shards fine: every expert block, every LLM layer and then the whole
model become FSDP units, parameters turn into DTensors, and a full state dict is gathered at the
end into an ordinary eagle-hf folder.

    torchrun --nproc_per_node 2 examples/fsdp2_cpu.py --data train.json --image-folder images --output-dir out
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import eagle_hf  # noqa: F401
from eagle_hf.training import EagleDataCollator, LlavaDataset, apply_stage, read_rows
from eagle_hf.training.tiny import build_tiny


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--image-folder")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2, help="per process")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    dataset = LlavaDataset(read_rows(args.data), args.image_folder)
    model, processor = build_tiny(dataset.examples, seed=0)  # same seed: identical start on every rank
    apply_stage(model, "finetune", args.learning_rate)
    # One FSDP unit per block the model declares unsplittable, then the root.
    blocks = set(model._no_split_modules or [])
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.learning_rate)
    collator = EagleDataCollator(processor, max_length=model.config.max_sequence_length)

    model.train()
    for step in range(args.steps):
        first = (step * world + rank) * args.batch_size
        batch = collator([dataset[(first + i) % len(dataset)] for i in range(args.batch_size)])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            print(json.dumps({"step": step + 1, "loss": float(mean) / world,
                              "param_type": type(next(model.parameters())).__name__}), flush=True)

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        model.save_pretrained(args.output_dir, state_dict=state)
        processor.save_pretrained(args.output_dir)
        print(json.dumps({"saved": args.output_dir, "world_size": world, "tensors": len(state)}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
