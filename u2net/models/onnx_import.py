"""Building a PyTorch U²-Net from an ONNX file: ours (any precision), rembg's, or another exporter's.

:func:`read_onnx_checkpoint` (used by :func:`u2net.models.load_checkpoint` for ``.onnx`` paths) works by graph
structure, not by names or node order: every convolution gets a signature from its weight shape, stride,
dilation and group and, recursively, the signatures of the nearest convolutions feeding it (whatever lies in
between: BatchNorm, ReLU, pooling, resizing, concatenation, casts, quantise/dequantise pairs). The same signatures
are computed for the PyTorch model by tracing one forward pass on the "meta" device, and equal signatures are
paired (padding and kernel checked too). So files from other exporters, reordered by graph optimisers, converted
to fp16 or statically quantised (QDQ: weights are dequantised) import as well. Graphs that keep
BatchNormalization give the state dict exactly; graphs with BatchNorm folded into the convolutions (the
TorchScript exporter's default, and likely rembg's files) give equivalent weights: the folded convolution and
an identity BatchNorm (weight 1, bias 0, running mean 0, running variance 1 - eps). The eval-mode forward is then
the same, but fine-tuning starts with reset-like BatchNorm statistics: in training mode BatchNorm normalises each
batch, so the first steps behave as if the BatchNorm layers were freshly initialised.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..data.preprocessing import Preprocessing
from .onnx_format import proto_metadata, require_onnx, topological_nodes
from .registry import is_model, list_models, model_factory

__all__ = ["onnx_to_state_dict", "read_onnx_checkpoint"]


def _constant_values(graph) -> dict[str, np.ndarray]:
    """Every value of the graph computable from initializers alone (through Constant, Identity, Cast and
    DequantizeLinear nodes: enough for fp16 and QDQ int8 files)."""
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        ins = [i for i in node.input]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            if "value" in attrs:
                values[node.output[0]] = numpy_helper.to_array(attrs["value"])
            elif "value_float" in attrs or "value_floats" in attrs:
                values[node.output[0]] = np.asarray(attrs.get("value_float", attrs.get("value_floats")), np.float32)
        elif not ins or not all(i in values for i in ins if i):
            continue
        elif node.op_type == "Identity":
            values[node.output[0]] = values[ins[0]]
        elif node.op_type == "Cast":
            values[node.output[0]] = values[ins[0]].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        elif node.op_type == "DequantizeLinear" and not attrs.get("block_size"):
            x, scale = values[ins[0]].astype(np.float32), values[ins[1]].astype(np.float32)
            zero = values[ins[2]].astype(np.float32) if len(ins) > 2 and ins[2] else np.zeros_like(scale)
            if scale.ndim == 1 and x.ndim > 1:
                shape = [1] * x.ndim
                shape[attrs.get("axis", 1)] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            values[node.output[0]] = (x - zero) * scale
    return values


_CONV_OPS = frozenset({"Conv", "FusedConv"})
_NO_DATA_OPS = frozenset({"Shape", "Size"})  # their outputs carry shapes, not image data
_INPUT = "<input>"


def _signature(shape, stride, dilation, group, upstream: list[str]) -> str:
    """A convolution's identity by structure alone: its own shape and attributes, and (recursively, through
    their signatures) the nearest convolutions upstream of its input, whatever lies between (BatchNorm,
    ReLU, pooling, resizing, concatenation, casts, quantise/dequantise pairs)."""
    text = repr((tuple(shape), tuple(stride), tuple(dilation), int(group), tuple(sorted(upstream))))
    return hashlib.sha1(text.encode()).hexdigest()


def _onnx_convs(graph, values: Mapping[str, np.ndarray], source: str) -> list[dict]:
    """The graph's convolutions in topological order, each with its constant weight, bias, attributes, the
    BatchNormalization applied directly to its output (if any) and its structural signature."""
    from onnx import helper

    nodes = topological_nodes(graph)
    consumers = defaultdict(list)
    for node in nodes:
        for name in node.input:
            consumers[name].append(node)
    if not any(node.op_type in _CONV_OPS for node in nodes):
        if any(node.op_type in ("ConvInteger", "QLinearConv") for node in nodes):
            raise ValueError(f"{source}: integer convolutions (dynamic int8 / QOperator files) cannot be imported")
        return []
    graph_inputs = {v.name for v in graph.input} - set(values)
    upstream: dict[str, frozenset] = {name: frozenset({_INPUT}) for name in graph_inputs}
    signatures: dict[str, str] = {}
    convs = []
    for node in nodes:
        if node.op_type in _NO_DATA_OPS:
            reached = frozenset()
        elif node.op_type in _CONV_OPS:
            reached = frozenset({node.output[0]})
        else:
            reached = frozenset().union(*(upstream.get(name, frozenset()) for name in node.input if name))
        for name in node.output:
            upstream[name] = reached
        if node.op_type not in _CONV_OPS:
            continue
        label = node.name or node.output[0]
        if node.input[1] not in values:
            raise ValueError(f"{source}: Conv {label!r} has weights computed at run time; cannot import")
        weight = values[node.input[1]]
        bias = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{source}: Conv {label!r} uses auto_pad; only explicit pads are supported")
        bn = None
        users = consumers[node.output[0]]
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            bn_node = users[0]
            if not all(name in values for name in bn_node.input[1:5]):
                raise ValueError(f"{source}: BatchNormalization after {label!r} has non-constant parameters")
            bn_attrs = {a.name: helper.get_attribute_value(a) for a in bn_node.attribute}
            bn = [values[name].astype(np.float64) for name in bn_node.input[1:5]]
            bn.append(float(bn_attrs.get("epsilon", 1e-5)))
        ups = [_INPUT if u == _INPUT else signatures[u] for u in upstream[node.input[0]]]
        signature = _signature(
            weight.shape,
            attrs.get("strides", [1, 1]),
            attrs.get("dilations", [1, 1]),
            attrs.get("group", 1),
            ups,
        )
        signatures[node.output[0]] = signature
        convs.append({"name": label, "weight": weight, "bias": bias, "attrs": attrs, "bn": bn, "signature": signature})
    return convs


def _flat_tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _flat_tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _flat_tensors(item)]
    return []


class _DataflowTracer(torch.overrides.TorchFunctionMode):
    """Follows one forward pass call by call: which convolutions feed each convolution (through any other
    operations) and which BatchNorm directly follows which convolution."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.owner: dict[int, tuple[str, str]] = {}
        self.state_ids: set[int] = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                self.owner[id(module.weight)] = ("conv", name)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                for tensor in (module.weight, module.running_mean):
                    if tensor is not None:
                        self.owner[id(tensor)] = ("bn", name)
        self.reached: dict[int, tuple[torch.Tensor, frozenset]] = {}  # tensors kept so their ids stay unique
        self.conv_output: dict[int, str] = {}
        self.order: list[str] = []
        self.upstream: dict[str, frozenset] = {}
        self.bn_after: dict[str, str] = {}

    def mark(self, tensor: torch.Tensor, reached: frozenset) -> None:
        self.reached[id(tensor)] = (tensor, reached)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        tensors = _flat_tensors((args, kwargs))
        owner = next((self.owner[id(t)] for t in tensors if id(t) in self.owner), None)
        data = [t for t in tensors if id(t) not in self.state_ids]
        reached = frozenset().union(*(self.reached[id(t)][1] for t in data if id(t) in self.reached))
        outputs = _flat_tensors(result)
        if owner is not None and owner[0] == "conv" and data:
            name = owner[1]
            self.order.append(name)
            self.upstream[name] = self.reached.get(id(data[0]), (None, frozenset()))[1]
            reached = frozenset({name})
            if outputs:
                self.conv_output[id(outputs[0])] = name
        elif owner is not None and owner[0] == "bn" and data and id(data[0]) in self.conv_output:
            self.bn_after[self.conv_output[id(data[0])]] = owner[1]
        if reached:
            for tensor in outputs:
                self.mark(tensor, reached)
        return result


def _model_convs(model: nn.Module) -> list[dict]:
    """The model's convolutions in execution order, with their BatchNorm and structural signature."""
    was_training = model.training
    tracer = _DataflowTracer(model)
    device = next(model.parameters()).device  # a model on the "meta" device traces in no time
    x = torch.zeros(1, int(getattr(model, "in_ch", 3)), 32, 32, device=device)
    try:
        model.eval()
        with torch.no_grad(), tracer:
            tracer.mark(x, frozenset({_INPUT}))
            model(x)
    finally:
        model.train(was_training)
    if len(set(tracer.order)) != len(tracer.order):
        raise ValueError("the model runs a convolution more than once; import by structure is not supported")
    modules = dict(model.named_modules())
    signatures: dict[str, str] = {}
    convs = []
    for name in tracer.order:
        conv = modules[name]
        ups = [_INPUT if u == _INPUT else signatures[u] for u in tracer.upstream[name]]
        signatures[name] = _signature(conv.weight.shape, conv.stride, conv.dilation, conv.groups, ups)
        convs.append({"name": name, "module": conv, "bn": tracer.bn_after.get(name), "signature": signatures[name]})
    return convs


def _check_attrs(conv: nn.Conv2d, attrs: Mapping, label: str) -> None:
    kernel = list(attrs.get("kernel_shape", conv.kernel_size))
    expected = {
        "kernel_shape": (kernel, list(conv.kernel_size)),
        "strides": (list(attrs.get("strides", [1, 1])), list(conv.stride)),
        "dilations": (list(attrs.get("dilations", [1, 1])), list(conv.dilation)),
        "group": (int(attrs.get("group", 1)), conv.groups),
    }
    if isinstance(conv.padding, tuple):
        expected["pads"] = (list(attrs.get("pads", [0, 0, 0, 0])), [*conv.padding, *conv.padding])
    for key, (got, want) in expected.items():
        if got != want:
            raise ValueError(f"Conv {label!r}: {key} {got} where the model has {want}")


def _pair_convs(model: nn.Module, convs: list[dict]) -> list[tuple[dict, dict]]:
    """(model conv, file conv) pairs matched by structural signature; convolutions with equal signatures (none
    in U²-Net) are paired in order."""
    own = _model_convs(model)
    if len(own) != len(convs):
        raise ValueError(f"the file has {len(convs)} convolutions, the model {len(own)}")
    by_signature = defaultdict(list)
    for found in convs:
        by_signature[found["signature"]].append(found)
    pairs = []
    for mine in own:
        candidates = by_signature.get(mine["signature"])
        if not candidates:
            raise ValueError(f"no convolution of the file has the shape and place of {mine['name']}")
        pairs.append((mine, candidates.pop(0)))
    return pairs


def _match_state_dict(model: nn.Module, convs: list[dict]) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` (which may live on the "meta" device: only its structure is used) with every
    convolution and BatchNorm taken from the file's ``convs``."""
    modules = dict(model.named_modules())
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}

    def put(key: str, array: np.ndarray) -> None:
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(shapes[key])

    for mine, found in _pair_convs(model, convs):
        name, conv, bn_name = mine["name"], mine["module"], mine["bn"]
        weight = found["weight"].astype(np.float64)
        _check_attrs(conv, found["attrs"], found["name"])
        bias = found["bias"].astype(np.float64) if found["bias"] is not None else np.zeros(weight.shape[0])
        if found["bn"] is not None and bn_name is None:  # fold the file's BatchNorm into our plain convolution
            scale, shift, mean, var, eps = found["bn"]
            factor = scale / np.sqrt(var + eps)
            weight, bias = weight * factor[:, None, None, None], (bias - mean) * factor + shift
        if conv.bias is None:
            if np.any(bias != 0):
                raise ValueError(f"Conv {found['name']!r} has a bias but {name} has none")
        else:
            put(f"{name}.bias", bias)
        put(f"{name}.weight", weight)
        if bn_name is None:
            continue
        bn = modules[bn_name]
        if found["bn"] is not None:
            scale, shift, mean, var, eps = found["bn"]
            put(f"{bn_name}.weight", scale)
            put(f"{bn_name}.bias", shift)
            put(f"{bn_name}.running_mean", mean)
            # keep var + eps as in the file should its epsilon differ from ours
            put(f"{bn_name}.running_var", var if eps == bn.eps else np.maximum(var + eps - bn.eps, 0.0))
        else:  # folded file: identity BatchNorm, (x - 0) / sqrt((1 - eps) + eps) * 1 + 0 = x
            channels = weight.shape[0]
            put(f"{bn_name}.weight", np.ones(channels))
            put(f"{bn_name}.bias", np.zeros(channels))
            put(f"{bn_name}.running_mean", np.zeros(channels))
            put(f"{bn_name}.running_var", np.full(channels, 1.0 - bn.eps))
    for key in shapes:
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                raise ValueError(f"the file has no value for {key}")
            state[key] = torch.zeros((), dtype=torch.long)
    return {key: state[key] for key in shapes}


def read_onnx_checkpoint(path: str | os.PathLike) -> dict:
    """An ONNX U²-Net (ours, or rembg's u2net / u2netp / u2net_human_seg) as a checkpoint dict:
    ``{"model": state_dict, "model_name": ..., "model_args": ..., "preprocessing": ...}`` (the last two when the
    file's metadata has them). Raises ``ValueError`` when the file is no U²-Net this package can build."""
    onnx = require_onnx()
    source = str(path)
    try:
        proto = onnx.load(source)
    except Exception as exc:
        raise ValueError(f"{source}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    meta = proto_metadata(proto)
    convs = _onnx_convs(proto.graph, _constant_values(proto.graph), source)
    if not convs:
        raise ValueError(f"{source}: no convolutions: not a U²-Net ONNX file")
    shapes = Counter(tuple(c["weight"].shape) for c in convs)

    candidates: list[tuple[str, dict]] = []
    named = meta.get("model_name")
    if isinstance(named, str) and is_model(named):
        args = meta.get("model_args")
        candidates.append((named, dict(args) if isinstance(args, Mapping) else {}))
    candidates += [(name, {}) for name in ("u2net", "u2netp", *list_models()) if is_model(name)]
    errors, tried = [], set()
    for name, args in candidates:
        # The registry, not create_model, whose weights= loading comes through this module. The registry
        # defines the built-in architectures itself, so they are there however this module was reached.
        try:
            with torch.device("meta"):  # structure only: no memory, no initialisation
                model = model_factory(name)(**args)
        except (TypeError, ValueError) as exc:  # the metadata's model_args: unknown keys, out of bounds
            errors.append(f"{name}: its model_args do not build ({exc})")
            continue
        key = (name, json.dumps(getattr(model, "model_args", args), sort_keys=True))
        if key in tried:
            continue
        tried.add(key)
        own = Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d))
        if own != shapes:
            errors.append(f"{name}: other convolution shapes")
            continue
        try:
            state = _match_state_dict(model, convs)
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
            continue
        checkpoint = {"model": state, "model_name": name}
        if args:
            checkpoint["model_args"] = args
        preprocessing = Preprocessing.from_metadata(meta)
        if preprocessing is not None:
            checkpoint["preprocessing"] = preprocessing.to_dict()
        return checkpoint
    raise ValueError(f"{source}: does not match any U²-Net architecture ({'; '.join(errors)})")


def onnx_to_state_dict(path: str | os.PathLike) -> tuple[str, dict[str, torch.Tensor]]:
    """``(architecture name, state dict)`` of an ONNX U²-Net; see :func:`read_onnx_checkpoint`."""
    checkpoint = read_onnx_checkpoint(path)
    return checkpoint["model_name"], checkpoint["model"]
