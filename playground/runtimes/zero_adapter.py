"""The zero adapter: a LoRA adapter that changes nothing, for runtimes that need an adapter where the model alone
should answer."""

from __future__ import annotations

from pathlib import Path


def zero_adapter(model_source: str, targets, out: Path, *, rank: int = 1, trust_remote_code: bool = False) -> Path:
    """A LoRA adapter with every weight zero on `targets` of the model (shapes from its config alone: no weights
    are loaded), in PEFT's format: served, it is the model exactly. The onnx builder makes its LoRA slots from one
    (rank 8); the vllm runtime serves one as `v0`."""
    if (out / "adapter_model.safetensors").is_file():
        return out
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_source, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets)))
    scratch = out.with_name(out.name + ".partial")
    scratch.mkdir(parents=True, exist_ok=True)
    zeros = {
        key: torch.zeros(value.shape, dtype=torch.float32) for key, value in get_peft_model_state_dict(peft).items()
    }
    save_file(zeros, str(scratch / "adapter_model.safetensors"))
    peft.peft_config["default"].save_pretrained(str(scratch))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    scratch.rename(out)
    return out
