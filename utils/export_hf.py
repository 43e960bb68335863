"""Export a run for Hugging Face `transformers`:

    python -m utils.export_hf checkpoints/<project>/<run> --output exported/<name>

A pre-norm transformer run (arch=transformer_chat, whose default is norm_position=pre) exports as a standard
LlamaForCausalLM: config.json (model_type llama), model.safetensors under Llama's names (models/llama.py), the
generation config and the tokenizer with our chat template in tokenizer_config.json; nothing else is needed:

    model = AutoModelForCausalLM.from_pretrained(DIR)
    tokenizer = AutoTokenizer.from_pretrained(DIR)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]

Its ACT Q-head, which Llama has no place for, goes to q_head.safetensors (init_from=DIR reads it back).
Every other run (TRM chat and puzzle runs, post-norm transformers) exports with its own modeling file
(modeling_trm.py and the model files it imports, see models/hf.py), our state dict as it is:

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

The weights are the EMA ones when saved (--no-ema: the raw ones). Every export loads back with `init_from=DIR`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from safetensors.torch import save_file

from models.llama import OURS, llama_config, llama_mismatch, to_llama
from utils.checkpoint import HF_Q_HEAD, HF_WEIGHTS, find_checkpoint, load_trained_model
from utils.cli import exit_on_bad_input
from utils.files import make_dir
from utils.tokenizer import ChatTokenizer, SPECIAL_TOKENS

MODELS = Path(__file__).resolve().parent.parent / "models"
CODE = {"hf.py": "modeling_trm.py", "trm.py": "trm.py", "transformer.py": "transformer.py", "layers.py": "layers.py",
        "kv_cache.py": "kv_cache.py", "sparse_embedding.py": "sparse_embedding.py"}
AUTO_MAP = {"AutoConfig": "modeling_trm.TRMHFConfig", "AutoModel": "modeling_trm.TRMForCausalLM",
            "AutoModelForCausalLM": "modeling_trm.TRMForCausalLM"}


def chat_template() -> str:
    """Our chat format (ChatTokenizer.encode_chat) as a Jinja template: <role>text</role> per message, then
    <assistant> with add_generation_prompt, else the end-of-text token."""
    roles = {role: (SPECIAL_TOKENS[f"{role}_start"], SPECIAL_TOKENS[f"{role}_end"]) for role in ("system", "user", "assistant")}
    return ("{%- set tags = " + json.dumps(roles) + " -%}"
            "{%- for message in messages -%}"
            "{%- if message['role'] not in tags -%}{{ raise_exception('unknown role ' + message['role']) }}{%- endif -%}"
            "{{ tags[message['role']][0] + message['content'] + tags[message['role']][1] }}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ " + json.dumps(SPECIAL_TOKENS["assistant_start"]) + " }}"
            "{%- else -%}{{ " + json.dumps(SPECIAL_TOKENS["eot"]) + " }}{%- endif -%}")


def relative_imports(source: str) -> str:
    """`from models.x import` -> `from .x import`: the copied files import each other inside the export."""
    return re.sub(r"^from models\.(\w+) import", r"from .\1 import", source, flags=re.MULTILINE)


def export(run: str, output: str, use_ema: bool = True) -> tuple[str, bool]:
    """Write the export of `run` (a run directory or checkpoint file) to `output`; return the checkpoint used
    and whether the export is a LlamaForCausalLM."""
    from transformers import GenerationConfig, LlamaConfig

    from models.hf import TRMHFConfig

    file = find_checkpoint(run)
    model, checkpoint = load_trained_model(file, use_ema=use_ema, dtype="float32")
    arch = {k: v for k, v in checkpoint["model_config"].items() if k != "loss"}
    arch["forward_dtype"] = "float32"  # transformers users pick their dtype with torch_dtype / .to()
    llama = llama_mismatch(arch["name"], model.config) is None
    tokenizer_dir = os.path.join(os.path.dirname(file), "tokenizer")
    tokenizer = ChatTokenizer.load(tokenizer_dir) if os.path.isdir(tokenizer_dir) else None

    make_dir(output)
    if Path(output, "config.json").is_file():  # an earlier export here: its files of the other kind contradict this
        for name in CODE.values() if llama else [HF_Q_HEAD]:
            Path(output, name).unlink(missing_ok=True)
    special = dict(eos_token_id=None, pad_token_id=None, bos_token_id=None)
    if tokenizer is not None:
        special = dict(eos_token_id=[tokenizer.special_id("assistant_end"), tokenizer.eot_id],
                       pad_token_id=tokenizer.pad_id, bos_token_id=None)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    if llama:
        config = llama_config(model.config)
        LlamaConfig(**config, **special, architectures=["LlamaForCausalLM"]).save_pretrained(output)
        save_file({k: v for k, v in state.items() if k.startswith(OURS + "q_head.")}, os.path.join(output, HF_Q_HEAD))
        state = to_llama(state, config)
    else:
        for name, target in CODE.items():
            Path(output, target).write_text(relative_imports((MODELS / name).read_text()))
        TRMHFConfig(arch=arch, architectures=["TRMForCausalLM"], auto_map=AUTO_MAP, **special).save_pretrained(output)
    if tokenizer is not None:
        GenerationConfig(**special, do_sample=False, use_cache=llama).save_pretrained(output)
        tokenizer.tok.chat_template = chat_template()
        tokenizer.tok.eos_token, tokenizer.tok.pad_token = SPECIAL_TOKENS["assistant_end"], SPECIAL_TOKENS["pad"]
        tokenizer.save(output)  # the transformers files, and ours (init_from=DIR checks the vocabulary with it)
        tokenizer.tok.save_pretrained(output, save_jinja_files=False)  # the template in tokenizer_config.json
        Path(output, "chat_template.jinja").unlink(missing_ok=True)  # (which a .jinja file would override)
    save_file(state, os.path.join(output, HF_WEIGHTS), metadata={"format": "pt", "source": file})
    return file, llama


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.export_hf", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory (latest step), a step_<N>[.pt] file, or <run>/latest")
    ap.add_argument("--output", required=True, help="the directory to write (created)")
    ap.add_argument("--no-ema", action="store_true", help="export the raw weights even when EMA weights are saved")
    args = ap.parse_args(argv)
    with exit_on_bad_input():
        file, llama = export(args.run, args.output, use_ema=not args.no_ema)
    how = "a LlamaForCausalLM" if llama else "with its modeling file"
    print(f"exported {file} to {args.output} ({how}): AutoModelForCausalLM.from_pretrained({args.output!r}"
          f"{'' if llama else ', trust_remote_code=True'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
