"""``eagle-hf serve``: an OpenAI-compatible server (``/v1/chat/completions`` with images, streaming
or not) for one eagle-hf model, built from transformers' own serving code (see
``eagle_hf.integrations.serve``). Needs the serving extras: ``pip install "eagle-hf[serve]"``."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("model", help="an eagle-hf folder (or original EAGLE folder / Hub id); requests name it as `model`")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 exposes the server to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="device_map for loading: auto, cpu, cuda:0, ...")
    parser.add_argument("--dtype", default="auto", help="auto (from the weights), bfloat16, float16, float32")
    parser.add_argument("--attn-implementation", help="e.g. sdpa, eager")
    parser.add_argument("--log-level", default="warning")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..integrations.serve import build_app
    except ImportError as err:
        raise ValueError(f"serving needs the serving extras ({err.name} is missing): "
                         'pip install "eagle-hf[serve]"') from None
    app, _ = build_app(args.model, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation)
    print(f"serving {args.model} on http://{args.host}:{args.port}/v1 (OpenAI-compatible)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
