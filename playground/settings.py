"""Every setting of the playground, defined once as dataclasses and parsed once, for `python app.py` and for
`python -m playground …`: a flag, else the `PLAYGROUND_<NAME>` environment variable, else the default.

- `ModelSettings`: which models, where their files live, how they run (every command).
- `Sampling`: how an answer is drawn (the CLI's answers; the page's defaults).
- `RoundSettings`: what a round does (the trainer; the app passes its complete copy to its trainer process).
- `ServerSettings`: the web server (app.py only).

Flags are the field names with dashes (`--min-pairs`); transformers' `HfArgumentParser` turns the fields into
argparse options, and `add_settings` puts the environment in between. `PLAYGROUND_ADMIN_TOKEN` is read from the
environment only (a flag would show in `ps`).
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError

ENV_PREFIX = "PLAYGROUND_"
ADMIN_TOKEN_ENV = "PLAYGROUND_ADMIN_TOKEN"
PRECISIONS = ("auto", "int4", "int8", "float")
RUNTIMES = ("auto", "torch", "onnx", "vllm")
DPO_REFERENCES = ("sft", "previous")  # RoundSettings.dpo_reference: what the preference stages measure against
# RoundSettings.preference_route: how pairs train the policy: directly (DPO), or through a reward model and RL
PREFERENCE_ROUTES = ("dpo", "rlhf")
MAX_NEW_TOKENS_LIMIT = 1024
# The seeds every runtime takes: ONNX Runtime GenAI's random_seed is a C int, and a duel's second answer uses
# seed + 1.
MAX_SEED = 2**31 - 2


def all_the_cores() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)


def half_the_cores() -> int:
    """Torch threads for one of the two busy processes (the server decodes two models at once; the trainer trains):
    half the CPUs this process may use, at least 1."""
    return max(1, all_the_cores() // 2)


SPACE_VOLUME = Path("/data")


def on_space() -> bool:
    """Whether this process runs on a Hugging Face Space (which sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def default_data_dir() -> Path:
    """The data directory when none is given: the XDG data home, always on local disk. (The live SQLite database
    must not sit on a Space's bucket volume: its files can be seconds stale and its locks are unreliable. The durable
    copy goes there instead: `persist`.)"""
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "alignment-playground"


def default_persist_dir() -> Path | None:
    """On a Space with a writable volume mounted at /data: there; elsewhere no durable copy unless asked."""
    if on_space() and SPACE_VOLUME.is_dir() and os.access(SPACE_VOLUME, os.W_OK):
        return SPACE_VOLUME
    return None


def _default_pairs_per_voter() -> int:
    # On a public Space one script must not steer the model: a voter's pairs in one round stay below half of the
    # pairs that start one, so a round always needs at least two voters. A lone local user trains on their own votes.
    return 4 if on_space() else 0


def _default_host() -> str:
    # On a Space the server must listen on all interfaces; elsewhere only this machine sees it unless asked.
    return "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"


def _default_port() -> int:
    return int(os.environ.get("GRADIO_SERVER_PORT") or 7860)


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class ModelSettings:
    _argument_group_name = "models and data"

    preset: str = field(
        default="auto",
        metadata=_help(
            "`auto`: `embedded` when its packages are installed, else `smollm2-135m` (see Models and presets)"
        ),
    )
    base: str | None = field(default=None, metadata=_help("base model: Hub id, local folder or .gguf file"))
    sft: str | None = field(default=None, metadata=_help("SFT model: Hub id, local folder or .gguf file"))
    data_dir: str | None = field(
        default=None, metadata=_help("model caches and the data sets (votes, adapters): see Data directory")
    )
    device: str = field(default="cpu", metadata=_help("`cpu` or `cuda`"))
    precision: str = field(
        default="auto",
        metadata=_help(
            "`auto`: on a CPU the base model runs with int8 weights, and the SFT model with whichever of fp32 and int4 "
            "the first start measured fastest on this CPU within the fidelity bound (onnx runtime; torch: float); "
            "`int4`: the SFT model's 4-bit ONNX copy (onnx only); `int8`: both models int8 (the onnx runtime keeps "
            "the SFT model float); `float`: neither; on a GPU `auto` is float (docs/performance.md)",
            choices=PRECISIONS,
        ),
    )
    runtime: str = field(
        default="auto",
        metadata=_help(
            "what decodes answers: `onnx` (ONNX Runtime GenAI in a worker process per model; CPU only), `torch` "
            "(transformers), `vllm` (a vLLM server: see --vllm-url); `auto`: onnx on a CPU when it is installed and can "
            "build the models, else torch (docs/performance.md, Serving runtime; README, Scale out)",
            choices=RUNTIMES,
        ),
    )
    vllm_url: str | None = field(
        default=None,
        metadata=_help(
            "with --runtime vllm: the vLLM server (OpenAI API) that serves the SFT model, e.g. http://gpu-box:8000; "
            "unset: one is started here from the vLLM environment (--vllm-python) and stopped on exit"
        ),
    )
    base_vllm_url: str | None = field(
        default=None,
        metadata=_help(
            "with --runtime vllm: a vLLM server for the base model (a server serves one model); unset: the base arm runs "
            "on the local runtime (onnx on a CPU)"
        ),
    )
    vllm_python: str | None = field(
        default=None,
        metadata=_help(
            "the python of a virtual environment with vLLM, to start a server; unset: the python beside a `vllm` on "
            "PATH, else the project's .venv-vllm (setup.sh)"
        ),
    )
    chat_workers: int = field(
        default=1,
        metadata=_help(
            "with the onnx runtime, processes decoding the SFT model: 1 decodes the SFT and the preference answer as "
            "one batch (one pass over the weights per token); 2 gives each its own process (one more copy of the SFT "
            "weights in memory; see docs/performance.md for when it pays)",
            choices=(1, 2),
        ),
    )
    serve_threads: int = field(
        default_factory=half_the_cores,
        metadata=_help(
            "threads for generation: half the CPU cores, so the base and SFT models each get their own (torch threads; "
            "with the onnx runtime, threads of each decode process)"
        ),
    )
    trust_remote_code: bool = field(default=False, metadata=_help("let model repos run their own code"))
    persist: str | None = field(
        default=None,
        metadata=_help(
            "folder that receives the durable copy of every record and adapter (a Space's bucket volume) and that an "
            "empty data set is restored from; `off`: none (see Deploy as a Space)"
        ),
    )
    hub_dataset: str | None = field(
        default=None,
        metadata=_help(
            "dataset repo (`owner/name`) the durable copy is also pushed to every 5 minutes, for a Space without a "
            "volume; it is restored from when the local copy is empty"
        ),
    )

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UserError(f"Unknown precision '{self.precision}'. Fix: use one of {', '.join(PRECISIONS)}.")
        if self.runtime not in RUNTIMES:
            raise UserError(f"Unknown runtime '{self.runtime}'. Fix: use one of {', '.join(RUNTIMES)}.")
        if self.runtime == "auto" and self.vllm_url:
            self.runtime = "vllm"  # a vLLM server given is a vLLM server used
        if self.base_vllm_url and self.runtime != "vllm":
            raise UserError(
                "--base-vllm-url serves the base arm from vLLM alongside the SFT model's server. Fix: "
                "add --runtime vllm (and --vllm-url, or let the app start the SFT model's server)."
            )
        if self.serve_threads is not None and self.serve_threads < 1:
            raise UserError(f"serve_threads must be at least 1 (got {self.serve_threads}).")
        if self.chat_workers not in (1, 2):
            raise UserError(f"chat_workers must be 1 or 2 (got {self.chat_workers}).")

    def resolved_data_dir(self) -> Path:
        path = Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def resolved_persist(self) -> Path | None:
        """Where the durable copy goes: `persist`; with only `hub_dataset`, a local folder the scheduler pushes;
        None when there is no target."""
        if self.persist and self.persist.strip().lower() in ("off", "none", "no", "0"):
            return None
        if self.persist:
            return Path(self.persist).expanduser()
        default = default_persist_dir()
        if default is not None:
            return default
        if self.hub_dataset:
            return self.resolved_data_dir() / "durable-copy"
        return None


@dataclass
class Sampling:
    _argument_group_name = "sampling"

    temperature: float = field(default=0.7, metadata=_help("0 = greedy"))
    top_p: float = field(default=0.9, metadata=_help("nucleus sampling"))
    max_new_tokens: int = field(
        default=128,
        metadata=_help(
            f"answer length in tokens (the page's default; a visitor can pick 8–512; at most {MAX_NEW_TOKENS_LIMIT})"
        ),
    )
    seed: int | None = field(default=None, metadata=_help("a fixed seed; unset: a fresh one, recorded"))

    def checked(self) -> Sampling:
        """A copy with a concrete seed; raises ValueError with a readable message on nonsense settings."""
        if not 0 <= self.temperature <= 5:
            raise UserError(f"temperature must be between 0 and 5 (got {self.temperature}); 0 means greedy.")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1] (got {self.top_p}).")
        if not 1 <= int(self.max_new_tokens) <= MAX_NEW_TOKENS_LIMIT:
            raise UserError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT} (got {self.max_new_tokens}).")
        if self.seed is not None and not 0 <= int(self.seed) <= MAX_SEED:
            raise UserError(f"seed must be between 0 and {MAX_SEED} (got {self.seed}).")
        seed = self.seed if self.seed is not None else random.randrange(MAX_SEED + 1)
        return Sampling(float(self.temperature), float(self.top_p), int(self.max_new_tokens), int(seed))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundSettings:
    _argument_group_name = "training rounds"

    min_pairs: int = field(
        default=8,
        metadata=_help(
            "new pieces of feedback that start a round (or Train now): each preference pair, demonstration and rating "
            "counts one (demonstrations and ratings while their weight is above 0), at most `--pairs-per-voter` of one "
            "voter's; someone who only rates or only writes answers gets rounds too"
        ),
    )
    max_new_pairs: int = field(
        default=64,
        metadata=_help(
            "new pieces of feedback (pairs, demonstrations, ratings) per round, oldest first; more wait for the next one"
        ),
    )
    replay_pairs: int = field(
        default=8,
        metadata=_help(
            "earlier examples of each kind (pairs, demonstrations, ratings) trained again in each round (few, so "
            "rounds stay short and keep pace with the votes: each warm-starts from the version before it)"
        ),
    )
    sft_weight: float = field(
        default=1.0,
        metadata=_help(
            "weight of the demonstration (SFT) stage: people's better answers made likely; it scales that stage's "
            "learning rate; 0 = off (see How the model learns)"
        ),
    )
    rating_weight: float = field(
        default=0.4,
        metadata=_help(
            "weight of single ratings (thumbs, all bad): KTO's unpaired preference loss; it scales that stage's "
            "learning rate (0.4: KTO's 2e-4, as measured; it has no NLL anchor like DPO's); 0 = off"
        ),
    )
    epochs: int = field(default=2, metadata=_help("passes over a round's examples, in each stage"))
    batch_size: int = field(
        default=1,
        metadata=_help(
            "examples per forward/backward pass (the rating stage takes at least 2: KTO estimates its KL term from the "
            "other examples of a batch)"
        ),
    )
    grad_accumulation: int = field(
        default=4,
        metadata=_help(
            "passes per optimizer step: 4 passes of 1 pair make the updates of one pass of 4, in less memory"
        ),
    )
    learning_rate: float = field(
        default=5e-4,
        metadata=_help("constant learning rate (DPO's, held fluent by `--rpo-weight`; the stages' weights scale it)"),
    )
    beta: float = field(default=0.1, metadata=_help("DPO β: the strength of the pull to the reference"))
    rpo_weight: float = field(
        default=1.0,
        metadata=_help(
            "weight of the chosen answer's negative log-likelihood beside DPO's loss (RPO: trl's loss_type "
            "[sigmoid, sft]): keeps what people preferred likely as the margin grows; 0 = plain DPO"
        ),
    )
    dpo_reference: str = field(
        default="sft",
        metadata=_help(
            "what each round's preference stages (DPO, KTO) measure against: `sft`, the SFT model in every round "
            "(every version held to it); `previous`, the version the round starts from (iterative DPO: each round is "
            "held only to its parent, so rounds add up to more movement, and more drift; a round that starts from a "
            "fresh adapter measures against the SFT model either way)",
            choices=DPO_REFERENCES,
        ),
    )
    preference_route: str = field(
        default="dpo",
        metadata=_help(
            "how people's pairs train the preference-tuned model: `dpo`, directly (DPO on the pairs); `rlhf`, through "
            "the round's reward model: RL (trl's GRPO) on the voted prompts and on prompts nobody voted on "
            "(`--rl-prompts`), held to the SFT model by `--rl-beta` (see Two routes)",
            choices=PREFERENCE_ROUTES,
        ),
    )
    reward_model: bool = field(
        default=True,
        metadata=_help(
            "train a reward model on each round's pairs (trl's RewardTrainer): it scores answers on the page and is "
            "tested on every new vote before it trains on it; `false` turns it off for `dpo` rounds (an `rlhf` round "
            "always trains the one it is rewarded by)"
        ),
    )
    reward_learning_rate: float = field(
        default=5e-4, metadata=_help("learning rate of the reward model (its LoRA and its scalar head)")
    )
    rl_learning_rate: float = field(
        default=1e-3,
        metadata=_help(
            "`rlhf` route: constant learning rate of the RL stage (a round's few RL steps move the model far less "
            "per step than DPO's: see docs/performance.md)"
        ),
    )
    rl_beta: float = field(
        default=0.04, metadata=_help("`rlhf` route: the KL penalty to the SFT model (GRPO's β; 0 lets RL drift freely)")
    )
    rl_prompts: str | None = field(
        default=None,
        metadata=_help(
            '`rlhf` route: prompts nobody voted on that RL also trains on (JSONL, one `{"prompt": ...}` a line); '
            "unset: assets/prompts.jsonl"
        ),
    )
    rl_steps: int = field(default=12, metadata=_help("`rlhf` route: RL optimizer steps per round"))
    rl_generations: int = field(
        default=4, metadata=_help("`rlhf` route: answers sampled per prompt and step (GRPO's group)")
    )
    rl_completion_tokens: int = field(
        default=64, metadata=_help("`rlhf` route: most new tokens of each sampled answer")
    )
    checkpoint_steps: int = field(
        default=0,
        metadata=_help(
            "`rlhf` route under `simulate`: every N RL steps, record the reward model's score, the oracle's win "
            "rate against SFT and the KL on the held-out prompts (over-optimization); 0 = off"
        ),
    )
    max_length: int = field(default=256, metadata=_help("tokens of prompt + answer in training"))
    lora_r: int = field(default=8, metadata=_help("LoRA rank"))
    lora_alpha: int = field(default=16, metadata=_help("LoRA scale numerator"))
    lora_dropout: float = field(default=0.0, metadata=_help("LoRA dropout"))
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata=_help("the layers LoRA adapts (they stay float in an int8 SFT model)"),
    )
    train_threads: int = field(
        default_factory=half_the_cores, metadata=_help("torch threads of the trainer while the server is busy")
    )
    idle_train_threads: int = field(
        default_factory=all_the_cores,
        metadata=_help("torch threads of the trainer while nothing else uses the CPU (training/cores.py)"),
    )
    train_seed: int = field(default=0, metadata=_help("seed of the data order, LoRA init and replay choice"))
    pairs_per_voter: int = field(
        default_factory=_default_pairs_per_voter,
        metadata=_help(
            "most new pieces of feedback (pairs, demonstrations and ratings together) one voter (address or signed-in "
            "user) puts into one round; the rest wait for later rounds; 0 = no cap"
        ),
    )
    eval_prompts: str | None = field(
        default=None,
        metadata=_help(
            "the fixed prompt set each version's drift is measured on after its round (JSONL, one "
            '`{"prompt": ...}` a line); unset: assets/drift_prompts.jsonl'
        ),
    )
    eval_tokens: int = field(
        default=48, metadata=_help("most new tokens of each drift sample; 0 = no drift evaluation")
    )

    def __post_init__(self):
        # `--target-modules q_proj,v_proj` reads as one word; the environment variable is comma-separated too.
        self.target_modules = [
            part.strip()
            for item in ([self.target_modules] if isinstance(self.target_modules, str) else self.target_modules)
            for part in str(item).split(",")
            if part.strip()
        ]
        problems = [
            f"{name} must be at least {low} (got {getattr(self, name)})"
            for name, low in (
                ("min_pairs", 1),
                ("max_new_pairs", 1),
                ("replay_pairs", 0),
                ("epochs", 1),
                ("batch_size", 1),
                ("grad_accumulation", 1),
                ("max_length", 16),
                ("lora_r", 1),
                ("lora_alpha", 1),
                ("train_threads", 1),
                ("idle_train_threads", 1),
                ("pairs_per_voter", 0),
                ("eval_tokens", 0),
                ("rl_steps", 1),
                ("rl_generations", 2),
                ("rl_completion_tokens", 1),
                ("checkpoint_steps", 0),
            )
            if getattr(self, name) < low
        ]
        if not self.learning_rate > 0 or not self.beta > 0:
            problems.append("learning_rate and beta must be positive")
        problems += [
            f"{name} must be 0 (off) or more (got {getattr(self, name)})"
            for name in ("sft_weight", "rating_weight", "rpo_weight")
            if not getattr(self, name) >= 0
        ]
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if not self.target_modules:
            problems.append("target_modules must name at least one layer")
        if not self.reward_learning_rate > 0 or not self.rl_learning_rate > 0 or not self.rl_beta >= 0:
            problems.append("reward_learning_rate and rl_learning_rate must be positive, rl_beta 0 or more")
        if self.preference_route not in PREFERENCE_ROUTES:
            problems.append(
                f"preference_route must be one of {', '.join(PREFERENCE_ROUTES)} (got {self.preference_route!r})"
            )
        if self.dpo_reference not in DPO_REFERENCES:
            problems.append(f"dpo_reference must be one of {', '.join(DPO_REFERENCES)} (got {self.dpo_reference!r})")
        if problems:
            raise UserError("Round settings: " + "; ".join(problems) + ".")

    def as_dict(self) -> dict:
        return asdict(self)

    def feedback_kinds(self) -> tuple[str, ...]:
        """The kinds of feedback rounds train on with these weights (pairs always; see votes.FEEDBACK_KINDS)."""
        return tuple(
            kind
            for kind, weight in (("demonstrations", self.sft_weight), ("pairs", 1.0), ("ratings", self.rating_weight))
            if weight > 0
        )


@dataclass
class ServerSettings:
    _argument_group_name = "web server"

    host: str = field(
        default_factory=_default_host, metadata=_help("interface to listen on: `127.0.0.1`, or `0.0.0.0` on a Space")
    )
    port: int = field(default_factory=_default_port, metadata=_help("port (or `GRADIO_SERVER_PORT`): 7860"))
    votes_per_minute: int = field(default=20, metadata=_help("votes per browser session and minute"))
    votes_per_minute_per_address: int = field(
        default=60,
        metadata=_help(
            "votes per client address and minute, whatever the sessions (behind a Space's proxy: the forwarded address)"
        ),
    )
    require_login: bool = field(
        default=False,
        metadata=_help(
            "voting needs a signed-in Hugging Face user (on a Space with `hf_oauth: true`); votes record who cast them"
        ),
    )
    trainer: bool = field(
        default=True,
        metadata=_help(
            "run the trainer process; `--no-trainer`: serve only and train elsewhere on the same data directory "
            "(`python -m playground train --watch`)"
        ),
    )


SETTINGS = (ModelSettings, Sampling, RoundSettings, ServerSettings)
