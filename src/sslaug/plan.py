"""The experiment plan: paper tables -> cells -> pretraining runs and evaluations.

Torch-free, so the workflow can import it to build the DAG quickly. A cell merges
its table's defaults with its row's and column's overrides; the scale then maps the
paper's datasets, backbones and epochs to its own. Pretraining runs are identified by
their content (method, augmentation, options, backbone, dataset, epochs, seed), so a
run shared by several tables trains once and editing one table renames nothing else.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

#: What the engine implements so far; anything else becomes a clearly named placeholder.
IMPLEMENTED_METHODS = frozenset({"simclr", "byol", "mocov2", "mocov3", "simsiam", "barlowtwins", "dino", "dinov2"})
IMPLEMENTED_AUGMENTATIONS = frozenset({"standard", "sassl", "generative", "clsa", "rescue", "msr"})
IMPLEMENTED_PROTOCOLS = frozenset({"linear", "knn", "finetune", "detection", "voc07_cls", "training_time", "cka_opd"})
#: Options each implemented augmentation understands so far; others are gaps.
IMPLEMENTED_OPTIONS = {
    "standard": frozenset({"recipe", "fix_pred_lr"}),
    "sassl": frozenset({"style_source", "p", "alpha_min", "alpha_max", "beta_min", "beta_max"}),
    "generative": frozenset({"generator", "p", "views", "strategy"}),
    "clsa": frozenset({"crops", "query", "key", "loss"}),
    "rescue": frozenset({"k", "s"}),
    "msr": frozenset({"beta_base", "beta_schedule", "fix_pred_lr"}),
}
#: Option values equal to the engine's defaults: dropped from a run's identity, so a table
#: that spells out a default and one that leaves it implicit share one run (and its GPU hours).
OPTION_DEFAULTS = {
    "standard": {"fix_pred_lr": False},
    "sassl": {"style_source": "in_batch", "p": 0.8, "alpha_min": 0.1, "alpha_max": 0.3, "beta_min": 0.1, "beta_max": 0.3},
    "generative": {"generator": "unclip", "p": 1.0, "views": "one", "strategy": "generative_standard"},
    "msr": {"beta_schedule": "cosine", "fix_pred_lr": False},
}
#: Option values whose implementation lands later (none now: ICGAN runs from the user's ic_gan checkout).
PENDING_OPTION_VALUES: dict[tuple[str, str], str] = {}
#: Where each missing piece lands (shown in the dry run and in the tables).
PENDING_ISSUE = {
    "mocov2": "#3",
    "mocov3": "#3",
    "simsiam": "#3",
    "barlowtwins": "#3",
    "sassl": "#5",
    "generative": "#5",
    "rescue": "#4",
    "msr": "#4",
    "clsa": "#4",
    "voc07_cls": "#6",
    "fix_pred_lr": "#3",
    "icgan": "#5",
}
#: Options whose values name datasets: mapped by the scale's ``map.<option>`` (else ``map.dataset``).
DATASET_OPTIONS = ("style_source",)
#: Option values that look like dataset names but are not (SASSL's in-batch styles).
NOT_DATASETS = frozenset({"in_batch"})
#: Protocols whose number comes from pretraining itself, not from an evaluation job.
PRETRAIN_PROTOCOLS = frozenset({"training_time"})
#: Protocols that compare two encoders (002 Table 2). The cell's options name them:
#: ``encoder_a`` = ``<method>_seed<i>``, the cell's pretraining run at the i-th of the scale's
#: ``evaluations.<protocol>.encoder_seeds`` (default: its ``seeds``), becomes the cell's one run;
#: ``encoder_b`` = another such run or a pretrained reference encoder (``clip``) stays an option.
ENCODER_PAIR_PROTOCOLS = frozenset({"cka_opd"})
REFERENCE_ENCODERS = frozenset({"clip"})
ENCODER_OPTIONS = ("encoder_a", "encoder_b")
#: Scale evaluation settings the plan consumes itself (never passed to an entry point).
#: ``recipes``: named protocols (``evaluations.<protocol>.recipes.<name>``) that a cell picks with
#: the evaluation option ``recipe``; the name stays in the evaluation id, so two papers'
#: protocols never share a result.
PLAN_SETTINGS = ("ignore_options", "encoder_seeds", "recipes")
RECIPE_OPTION = "recipe"
_ENCODER_NAME = re.compile(r"(?P<method>[a-z0-9]+)_seed(?P<index>[1-9][0-9]*)")


class PlanError(ValueError):
    """The tables or scale config are inconsistent; the message names the path."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def map_name(mapping: Mapping[str, Any], name: Any) -> Any:
    """Scale mapping lookup: exact key, else ``"*"``, else unchanged."""
    for key in (name, str(name)):
        if key in mapping:
            return mapping[key]
    return mapping.get("*", name)


def _options_text(options: Mapping[str, Any]) -> str:
    return "".join(f"_{k}={options[k]}" for k in sorted(options))


@dataclass(frozen=True)
class PretrainRun:
    """One pretraining job (one seed)."""

    method: str
    augmentation: str
    options: tuple[tuple[str, Any], ...]
    backbone: str
    dataset: str
    epochs: int
    seed: int

    @property
    def run_id(self) -> str:
        """Readable and stable: ``simclr/standard/resnet50_imagenet_ep100/seed0``."""
        aug = self.augmentation + _options_text(dict(self.options))
        return f"{self.method}/{aug}/{self.backbone}_{self.dataset}_ep{self.epochs}/seed{self.seed}"

    @property
    def gaps(self) -> list[tuple[str, str]]:
        """(kind, name) of each piece this run needs that is not implemented yet."""
        gaps = []
        if self.method not in IMPLEMENTED_METHODS:
            gaps.append(("method", self.method))
        if self.augmentation not in IMPLEMENTED_AUGMENTATIONS:
            gaps.append(("augmentation", self.augmentation))
        else:
            known = IMPLEMENTED_OPTIONS.get(self.augmentation, frozenset())
            gaps += [("option", key) for key, _ in self.options if key not in known]
            gaps += [(key, value) for key, value in self.options if (key, value) in PENDING_OPTION_VALUES]
        return gaps

    @property
    def style_source(self) -> str | None:
        """SASSL's external style set (None for in-batch styles or other augmentations)."""
        source = dict(self.options).get("style_source", "in_batch") if self.augmentation == "sassl" else None
        return None if source in (None, "in_batch") else source

    @property
    def recipe(self) -> str | None:
        """The named view recipe of a standard run (MSR's aggressive / aggressive_weak baselines)."""
        return dict(self.options).get("recipe") if self.augmentation == "standard" else None

    @property
    def generator(self) -> str | None:
        return dict(self.options).get("generator", "unclip") if self.augmentation == "generative" else None


@dataclass(frozen=True)
class Evaluation:
    """One evaluation protocol on one dataset with its options."""

    protocol: str
    dataset: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def eval_id(self) -> str:
        return self.dataset + _options_text(dict(self.options))

    @property
    def gaps(self) -> list[tuple[str, str]]:
        return [] if self.protocol in IMPLEMENTED_PROTOCOLS else [("protocol", self.protocol)]


@dataclass
class Cell:
    """One table cell: the runs of every seed, their evaluation and the metric to report."""

    table: str
    row: str
    column: str
    metric: str
    runs: list[PretrainRun]
    evaluation: Evaluation

    @property
    def gap_id(self) -> str:
        """Placeholder id of what this cell lacks, e.g. ``method-mocov2+augmentation-sassl`` ('' if nothing)."""
        return "+".join(f"{kind}-{name}" for kind, name in self.runs[0].gaps + self.evaluation.gaps)


def gap_reason(gap_id: str) -> str:
    """Human text of a placeholder id, naming the issue each missing piece lands with."""
    parts = []
    for gap in gap_id.split("+"):
        kind, _, name = gap.partition("-")
        issue = PENDING_ISSUE.get(name)
        parts.append(f"{kind} {name} (issue {issue})" if issue else f"{kind} {name}")
    return "not implemented yet: " + "; ".join(parts)


@dataclass
class Plan:
    """Everything the DAG needs, for one scale."""

    scale: str
    cells: dict[str, list[Cell]] = field(default_factory=dict)
    runs: dict[str, PretrainRun] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def evaluations_of(self, table: str) -> list[Cell]:
        return self.cells[table]


def resolve_cell(table: Mapping[str, Any], row: str, column: str) -> dict[str, Any] | None:
    """Merge table defaults <- row <- column <- cell overrides; None when the cell is skipped."""
    where = f"tables.{table.get('_id', '?')}"
    spec = {k: copy.deepcopy(table[k]) for k in ("pretrain", "evaluation", "metric") if k in table}
    for part, overrides in (
        (f"{where}.rows[{row!r}]", table["rows"][row] or {}),
        (f"{where}.columns[{column!r}]", table["columns"][column] or {}),
        (f"{where}.cells[{row + ' | ' + column!r}]", (table.get("cells") or {}).get(f"{row} | {column}", {})),
    ):
        if not isinstance(overrides, Mapping):
            raise PlanError(f"{part} must be a mapping of overrides, got {overrides!r}")
        spec = deep_merge(spec, overrides)
    if spec.get("skip"):
        return None
    for key in ("pretrain", "evaluation", "metric"):
        if key not in spec:
            raise PlanError(f"{where} cell {row!r} | {column!r} has no {key!r} (set it in the table or row/column)")
    return spec


def _require(spec: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if key not in spec:
            raise PlanError(f"{where} lacks {key!r}")


def build_plan(tables: Mapping[str, Any], scale_name: str, scale: Mapping[str, Any]) -> Plan:
    """Resolve every cell of every table at one scale."""
    plan = Plan(scale=scale_name)
    mapping = scale.get("map", {})
    dataset_map = mapping.get("dataset", {})
    backbone_map = mapping.get("backbone", {})
    epochs_map = mapping.get("epochs", {})
    seeds = scale["seeds"]
    for table_id, table in tables.items():
        table = dict(table, _id=table_id)
        plan.tables[table_id] = table
        cells = []
        for row in table["rows"]:
            for column in table["columns"]:
                spec = resolve_cell(table, row, column)
                if spec is None:
                    continue
                where = f"tables.{table_id} cell {row!r} | {column!r}"
                pre, ev = spec["pretrain"], spec["evaluation"]
                _require(pre, ("method", "augmentation", "backbone", "dataset", "epochs"), f"{where} pretrain")
                _require(ev, ("protocol", "dataset"), f"{where} evaluation")
                options = dict(pre.get("options") or {})
                for key in DATASET_OPTIONS:
                    if key in options and options[key] not in NOT_DATASETS:
                        options[key] = map_name(mapping.get(key, dataset_map), options[key])
                epochs = map_name(epochs_map, pre["epochs"])
                dataset = map_name(dataset_map, pre["dataset"])
                backbone = map_name(backbone_map, pre["backbone"])
                if scale.get("datasets", {}).get(dataset, {}).get("cifar_stem") and backbone.startswith(("resnet", "vit")):
                    backbone += "_cifar"  # 32-64 px inputs: 3x3 stem, no max-pool (ResNets); 4 px patches (ViTs)
                runs = [
                    PretrainRun(
                        method=pre["method"],
                        augmentation=pre["augmentation"],
                        options=tuple(sorted(_without_defaults(pre["augmentation"], options).items())),
                        backbone=backbone,
                        dataset=dataset,
                        epochs=int(epochs),
                        seed=int(seed),
                    )
                    for seed in seeds
                ]
                # Options a scale pins anyway (e.g. mini's fixed detection iterations make the
                # 1x/2x schedule moot) are dropped, so identical evaluations run once.
                ignored = scale.get("evaluations", {}).get(ev["protocol"], {}).get("ignore_options", [])
                evaluation = Evaluation(
                    protocol=ev["protocol"],
                    dataset=map_name(dataset_map, ev["dataset"]),
                    options=tuple(sorted((k, v) for k, v in (ev.get("options") or {}).items() if k not in ignored)),
                )
                _check_recipe(evaluation, scale, where)
                if evaluation.protocol in ENCODER_PAIR_PROTOCOLS:
                    runs, evaluation = _encoder_pair_cell(runs[0], evaluation, scale, where)
                    partner = partner_run(runs[0], evaluation, scale)
                    if partner is not None:  # trained like any run (mini trains its one extra seed here)
                        plan.runs[partner.run_id] = partner
                cells.append(Cell(table_id, row, column, spec["metric"], runs, evaluation))
                for run in runs:
                    plan.runs[run.run_id] = run
        plan.cells[table_id] = cells
    return plan


def encoder_seeds(protocol: str, scale: Mapping[str, Any]) -> list[int]:
    """Seeds that ``<method>_seed1``, ``_seed2``, ... of a pair protocol name (1-based)."""
    return [int(s) for s in scale.get("evaluations", {}).get(protocol, {}).get("encoder_seeds", scale["seeds"])]


def named_encoder_run(name: Any, run: PretrainRun, seeds: Sequence[int], where: str) -> PretrainRun:
    """``<method>_seed<i>`` -> ``run`` at the i-th of ``seeds`` (different initialisation, same recipe)."""
    match = _ENCODER_NAME.fullmatch(str(name))
    if match is None or match["method"] != run.method:
        raise PlanError(
            f"{where}: encoder {name!r} is neither one of {sorted(REFERENCE_ENCODERS)} nor '{run.method}_seed<i>'"
        )
    index = int(match["index"])
    if index > len(seeds):
        raise PlanError(
            f"{where}: encoder {name!r} needs {index} seeds, the scale has {list(seeds)} "
            "(evaluations.<protocol>.encoder_seeds, else seeds)"
        )
    return dataclasses.replace(run, seed=int(seeds[index - 1]))


def partner_run(run: PretrainRun, evaluation: Evaluation, scale: Mapping[str, Any]) -> PretrainRun | None:
    """The second encoder of a pair evaluation of ``run``: a pretraining run, or None for a reference (CLIP)."""
    where = f"evaluation {evaluation.protocol}/{evaluation.eval_id} of {run.run_id}"
    name = dict(evaluation.options).get("encoder_b")
    if name is None:
        raise PlanError(f"{where}: option encoder_b missing")
    if name in REFERENCE_ENCODERS:
        return None
    partner = named_encoder_run(name, run, encoder_seeds(evaluation.protocol, scale), where)
    if partner == run:
        raise PlanError(f"{where}: encoder_b {name!r} is the run itself")
    return partner


def _encoder_pair_cell(
    run: PretrainRun, evaluation: Evaluation, scale: Mapping[str, Any], where: str
) -> tuple[list[PretrainRun], Evaluation]:
    """A pair cell's one run (``encoder_a``) and its evaluation, which keeps ``encoder_b`` only.

    Its error bar is the protocol's own (bootstrap interval), not a spread over seeds.
    """
    options = dict(evaluation.options)
    if any(key not in options for key in ENCODER_OPTIONS):
        raise PlanError(f"{where} evaluation: protocol {evaluation.protocol} needs options {list(ENCODER_OPTIONS)}")
    name_a = options.pop("encoder_a")
    if name_a in REFERENCE_ENCODERS:
        raise PlanError(f"{where}: encoder_a must be a pretraining run ('{run.method}_seed<i>'); put {name_a!r} in encoder_b")
    run_a = named_encoder_run(name_a, run, encoder_seeds(evaluation.protocol, scale), where)
    return [run_a], Evaluation(evaluation.protocol, evaluation.dataset, tuple(sorted(options.items())))


def _without_defaults(augmentation: str, options: Mapping[str, Any]) -> dict[str, Any]:
    defaults = OPTION_DEFAULTS.get(augmentation, {})
    return {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}


def _matches(when: Mapping[str, Any], run: PretrainRun) -> bool:
    return all(getattr(run, key) == value for key, value in when.items())


def run_spec(run: PretrainRun, scale_name: str, scale: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved specification of one run, as the pretraining entry point reads it.

    Method settings are the scale's ``methods.<method>`` with every matching
    ``overrides`` entry (``when``: run fields such as dataset or backbone) applied in order.
    """
    method = scale["methods"][run.method]
    settings = {key: dict(method.get(key, {})) for key in ("train", "hparams", "views", "multicrop", "backbone_kwargs")}
    for override in method.get("overrides", []):
        if _matches(override["when"], run):
            settings = {key: {**settings[key], **override.get(key, {})} for key in settings}
    if run.recipe or run.augmentation == "msr":
        settings["views"] = {}  # MSR's named and multi-stage recipes take no method view tweaks (recipe_for)
    splits = pretrain_splits(scale, run.dataset)
    return {
        "run": run.run_id,
        "scale": scale_name,
        "method": run.method,
        "augmentation": run.augmentation,
        "options": dict(run.options),
        "backbone": run.backbone,
        "dataset": run.dataset,
        "epochs": run.epochs,
        "seed": run.seed,
        "image_size": scale["datasets"][run.dataset]["image_size"],
        # Only a non-default list enters the spec, so the specs of existing runs stay byte-identical.
        **({"pretrain_splits": splits} if splits != [DEFAULT_PRETRAIN_SPLIT] else {}),
        **{key: value for key, value in settings.items() if value or key in ("train", "hparams", "views")},
        **({"stylizer": scale["stylizer"]} if run.augmentation == "sassl" else {}),
        # CLSA / Rescue: the scale's strong-augmentation settings (config/scales/*.yaml: strong).
        **({"strong": scale["strong"][run.augmentation]} if run.augmentation in scale.get("strong", {}) else {}),
    }


def _check_recipe(evaluation: Evaluation, scale: Mapping[str, Any], where: str) -> None:
    """A cell's ``recipe`` must name one of the scale's ``evaluations.<protocol>.recipes``."""
    recipe = dict(evaluation.options).get(RECIPE_OPTION)
    if recipe is None:
        return
    recipes = scale.get("evaluations", {}).get(evaluation.protocol, {}).get("recipes", {})
    if recipe not in recipes:
        raise PlanError(
            f"{where} evaluation: recipe {recipe!r} is not in the scale's evaluations.{evaluation.protocol}.recipes "
            f"(known: {sorted(recipes)}; or list 'recipe' in evaluations.{evaluation.protocol}.ignore_options)"
        )


def eval_spec(evaluation: Evaluation, scale: Mapping[str, Any]) -> dict[str, Any]:
    """The scale's protocol settings, then the cell's named recipe, then its other evaluation options."""
    protocol = scale["evaluations"].get(evaluation.protocol, {})
    settings = {k: v for k, v in protocol.items() if k not in PLAN_SETTINGS}
    # A pair protocol's encoders are the rule's inputs, not settings of its entry point.
    options = {k: v for k, v in evaluation.options if k not in ENCODER_OPTIONS}
    if RECIPE_OPTION in options:
        _check_recipe(evaluation, scale, f"evaluation {evaluation.protocol}/{evaluation.eval_id}")
        settings.update(protocol["recipes"][options[RECIPE_OPTION]])
    return {**settings, **options}


def eval_split_name(scale: Mapping[str, Any], protocol: str, dataset: str, role: str) -> str:
    """The split of ``dataset`` that an evaluation with ``protocol`` reads as ``role`` (train or test).

    The scale's ``datasets.<name>.splits`` names it; else ``train`` / ``test``, except that
    detection tests on ``val`` (COCO's split names).
    """
    if role not in ("train", "test"):
        raise ValueError(f"split role {role!r}: expected train or test")
    default = "val" if protocol == "detection" and role == "test" else role
    return scale["datasets"].get(dataset, {}).get("splits", {}).get(role, default)


DEFAULT_PRETRAIN_SPLIT = "train"


def pretrain_splits(scale: Mapping[str, Any], dataset: str) -> list[str]:
    """The splits of ``dataset`` that pretraining reads, concatenated (``datasets.<name>.splits.pretrain``)."""
    return list(scale["datasets"].get(dataset, {}).get("splits", {}).get("pretrain", [DEFAULT_PRETRAIN_SPLIT]))
