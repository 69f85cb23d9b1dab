"""ComfyUI's two workflow files, as `textinv generate --again FILE.json` reads them.

- "Save (API Format)" writes the graph ComfyUI runs, the one a picture's 'prompt' text holds: {node id:
  {"class_type", "inputs"}}, an input from another node a link [node id, output index]. Read as it is.
- "Save" writes the editor's format (a picture's 'workflow' text holds the same): {"nodes": [...], "links": [...]},
  each node with its `type`, its `widgets_values` (the values typed into it, in the order of its INPUT_TYPES, the
  inputs that are links left out) and its `inputs` (each with a link id); each link [id, from node, from slot, to
  node, to slot, type]. `api_graph` translates it into the API format for the nodes `again` reads, as ComfyUI's
  editor does when it queues a graph: a Reroute, a bypassed node and a Primitive are passed through, a muted node and
  a note dropped. Any other node type comes with its links alone (its widgets' order is its own), as the reader
  names such a node as not applied where the picture passed through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

_SEED = ("seed", "_control_after_generate")  # (the editor's "randomize/fixed/..." after a seed: no input)
# each node type's widgets, in the order the editor writes its widgets_values (ComfyUI's INPUT_TYPES, nodes.py and
# comfy_extras/nodes_clip_sdxl.py); a name starting with "_" is a widget that is no input. None: its widgets are not
# read (the tiled coders' changed across versions)
WIDGETS: dict[str, tuple[str, ...] | None] = {
    "KSampler": (*_SEED, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", "_control_after_generate", "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"),
    # the custom-sampling nodes (comfy_extras/nodes_custom_sampler.py, SamplerTCD nodes_advanced_samplers.py): a
    # sampler node's noise_device picks its _gpu name, the same sampler to textinv
    "SamplerCustom": ("add_noise", "noise_seed", "_control_after_generate", "cfg"),
    "SamplerCustomAdvanced": (),
    "RandomNoise": ("noise_seed", "_control_after_generate"),
    "DisableNoise": (),
    "CFGGuider": ("cfg",),
    "BasicGuider": (),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "KarrasScheduler": ("steps", "sigma_max", "sigma_min", "rho"),
    "ExponentialScheduler": ("steps", "sigma_max", "sigma_min"),
    "PolyexponentialScheduler": ("steps", "sigma_max", "sigma_min", "rho"),
    "SDTurboScheduler": ("steps", "denoise"),
    "BetaSamplingScheduler": ("steps", "alpha", "beta"),
    "SamplerEulerAncestral": ("eta", "s_noise"),
    "SamplerDPMPP_2S_Ancestral": ("eta", "s_noise"),
    "SamplerDPMPP_SDE": ("eta", "s_noise", "r", "noise_device"),
    "SamplerDPMPP_2M_SDE": ("solver_type", "eta", "s_noise", "noise_device"),
    "SamplerDPMPP_3M_SDE": ("eta", "s_noise", "noise_device"),
    "SamplerLMS": ("order",),
    "SamplerTCD": ("eta",),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CheckpointLoader": ("config_name", "ckpt_name"),
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g", "text_l"),
    "CLIPTextEncodeSDXLRefiner": ("ascore", "width", "height", "text"),
    "CLIPSetLastLayer": ("stop_at_clip_layer",),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "VAELoader": ("vae_name",),
    "VAEDecode": (),
    "VAEEncode": (),
    "VAEDecodeTiled": None,
    "VAEEncodeTiled": None,
    "ConditioningCombine": (),
    "ConditioningZeroOut": (),
    "LatentUpscale": ("upscale_method", "width", "height", "crop"),
    "LatentUpscaleBy": ("upscale_method", "scale_by"),
    "ImageScale": ("upscale_method", "width", "height", "crop"),
    "ImageScaleBy": ("upscale_method", "scale_by"),
    "ImageUpscaleWithModel": (),
    "UpscaleModelLoader": ("model_name",),
    "LoadImage": ("image", "_upload"),  # (its upload button's value, "image", is written after the file's name)
    "SaveImage": ("filename_prefix",),
    "PreviewImage": (),
    # core's value nodes (comfy_extras/nodes_primitive.py), whose value another node's input may take
    "PrimitiveString": ("value",),
    "PrimitiveStringMultiline": ("value",),
    "PrimitiveFloat": ("value",),
    "PrimitiveInt": ("value", "_control_after_generate"),  # (written by the versions that have it)
}
_EDITOR_ONLY = ("Reroute", "PrimitiveNode", "Note", "MarkdownNote")  # (not in the graph ComfyUI runs)
_MUTED, _BYPASSED = 2, 4  # a node's `mode`: "Never" (dropped) and "Bypass" (its inputs passed on to its outputs)
_PRIMITIVE = "primitive"  # what a widget's link from a Primitive gives: the value, already in the widget


def is_api_graph(data: Any) -> bool:
    """Whether `data` is ComfyUI's API format: {node id: {"class_type": ..., "inputs": {...}}}."""
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(node, dict) and "class_type" in node for node in data.values()))


def is_editor_workflow(data: Any) -> bool:
    """Whether `data` is ComfyUI's editor format: {"nodes": [...], "links": [...], ...}."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def api_graph(workflow: dict, path: Path) -> dict[str, dict]:
    """The editor's `workflow` (read from `path`) as ComfyUI's API format. The node types `WIDGETS` lists come whole;
    another type (ControlNet's, an upscaler's, a custom node) comes with its links alone, its widgets' order being its
    own: the graph's reader names it as not applied where the picture passed through it, as in an API-format graph,
    and passes it over elsewhere. A listed type with other widgets than textinv reads is refused naming it.

    >>> api_graph({"nodes": [{"id": 5, "type": "EmptyLatentImage", "widgets_values": [512, 768, 1]}], "links": []},
    ...           Path("w.json"))
    {'5': {'class_type': 'EmptyLatentImage', 'inputs': {'width': 512, 'height': 768, 'batch_size': 1}}}
    """
    nodes = {node.get("id"): node for node in workflow["nodes"] if isinstance(node, dict)}
    links = dict(pair for entry in workflow.get("links") or [] if (pair := _link(entry)))
    graph = {}
    for key, node in nodes.items():
        kind = node.get("type")
        if kind in _EDITOR_ONLY or node.get("mode") in (_MUTED, _BYPASSED):
            continue
        inputs = _widgets(node, path) if kind in WIDGETS else {}  # (another type: its links alone)
        for slot in node.get("inputs") or []:
            source = _source(slot.get("link") if isinstance(slot, dict) else None, nodes, links, set())
            if source is not None and source != _PRIMITIVE:
                inputs[(slot.get("widget") or {}).get("name") or slot.get("name")] = source
        graph[str(key)] = {"class_type": kind, "inputs": inputs}
    return graph


def _link(entry: Any) -> tuple[Any, tuple[Any, int]] | None:
    """(link id, (from node, from slot)) of an editor link: [id, from, slot, to, slot, type], or the newer
    {"id", "origin_id", "origin_slot", ...}; None for neither."""
    if isinstance(entry, list) and len(entry) >= 3:
        return entry[0], (entry[1], entry[2])
    if isinstance(entry, dict) and {"id", "origin_id", "origin_slot"} <= set(entry):
        return entry["id"], (entry["origin_id"], entry["origin_slot"])
    return None


def _widgets(node: dict, path: Path) -> dict[str, Any]:
    """A node's widgets_values as its inputs, by their names in `WIDGETS` (a dict of them: by its own names)."""
    names, values = WIDGETS[node["type"]], node.get("widgets_values") or []
    if names is None:
        return {}
    if isinstance(values, dict):
        return {name: values[name] for name in names if name in values and not name.startswith("_")}
    optional = len(names) - (1 if names and names[-1].startswith("_") else 0)  # (a last one that is no input)
    if not isinstance(values, list) or len(values) not in (len(names), optional):
        raise ConfigError(f"--again {path}: its ComfyUI workflow's {node['type']} node ({node.get('id')}) holds "
                          f"{len(values) if isinstance(values, list) else 'no list of'} widget values, where textinv "
                          f"reads {len(names)} ({', '.join(n.lstrip('_') for n in names)}): another ComfyUI version's "
                          f"node? Export the workflow with ComfyUI's \"Save (API Format)\" and give that file")
    return {name: value for name, value in zip(names, values) if not name.startswith("_")}


def _source(link: Any, nodes: dict, links: dict, seen: set) -> list | str | None:
    """Where a link comes from in the graph ComfyUI runs: [node id, output index], through Reroutes and bypassed
    nodes (whose input of the output's type, the same slot's first, is passed on); `_PRIMITIVE` from a Primitive;
    None from nothing (no link, a muted node, a loop)."""
    if link is None or link not in links or link in seen:
        return None
    seen.add(link)
    key, slot = links[link]
    node = nodes.get(key)
    if node is None or node.get("mode") == _MUTED:
        return None
    if node.get("type") == "PrimitiveNode":
        return _PRIMITIVE
    if node.get("type") == "Reroute" or node.get("mode") == _BYPASSED:
        return _source(_passed_on(node, slot), nodes, links, seen)
    return [str(key), slot]


def _passed_on(node: dict, slot: int) -> Any:
    """The link of the input a Reroute or a bypassed node passes on to its output `slot`: a Reroute's one; a bypassed
    node's input of the output's type, the one at the same slot where it is of that type, else the first."""
    inputs = [i for i in node.get("inputs") or [] if isinstance(i, dict)]
    if node.get("type") == "Reroute":
        return inputs[0].get("link") if inputs else None
    outputs = node.get("outputs") or []
    kind = outputs[slot].get("type") if slot < len(outputs) and isinstance(outputs[slot], dict) else None
    same = [i for i in inputs if i.get("type") == kind]
    at = inputs[slot] if slot < len(inputs) and inputs[slot].get("type") == kind else None
    chosen = at or (same[0] if same else None)
    return chosen.get("link") if chosen else None
