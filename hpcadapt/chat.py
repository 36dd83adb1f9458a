"""`python -m hpcadapt.chat MODEL_DIR`: a few turns with a trained or merged model.

    python -m hpcadapt.chat outputs/runs/tiny_demo-1a2b3c4d/merge          # type, Enter; empty line ends
    python -m hpcadapt.chat outputs/stages/orpo-1234abcd --prompt "What colour is Varnite?"
    python -m hpcadapt.chat MODEL_DIR --sample --temperature 0.7

The conversation goes through the model's own chat template, and generation stops on the
model's own stop tokens (its generation config), as it will once deployed. Greedy by
default, so the same question gets the same answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcadapt.errors import HpcadaptError


def reply(model, tokenizer, messages: list[dict], max_new_tokens: int, sample: bool, temperature: float) -> str:
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
    options = {"do_sample": sample, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if sample:
        options["temperature"] = temperature
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(**ids, **options)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m hpcadapt.chat", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a model folder: a stage folder, a run folder's stage link, a merge")
    ap.add_argument("--prompt", action="append", help="ask this (repeat for several turns) instead of reading stdin")
    ap.add_argument("--system", help="a system message to start the conversation with")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args(argv)
    try:
        from hpcadapt.eval.model_dir import check_model_dir, load_model, load_tokenizer, pick_device

        folder = check_model_dir(args.model.resolve(), "model")
        device = pick_device(None)
        model, tokenizer = load_model(folder, device), load_tokenizer(folder)
    except HpcadaptError as e:
        print(f"hpcadapt: error: {e}", file=sys.stderr)
        sys.exit(2)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    questions = iter(args.prompt) if args.prompt else (line.rstrip("\n") for line in sys.stdin)
    interactive = not args.prompt and sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        question = next(questions, "")
        if not question.strip():
            break
        messages.append({"role": "user", "content": question})
        answer = reply(model, tokenizer, messages, args.max_new_tokens, args.sample, args.temperature)
        messages.append({"role": "assistant", "content": answer})
        print(f"model> {answer}" if interactive else answer, flush=True)


if __name__ == "__main__":
    main()
