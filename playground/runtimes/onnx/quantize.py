"""The `int4` copy of the SFT model: its fp32 ONNX copy with 4-bit weights, made by ONNX Runtime's own quantizer.

Why it can be exact: the embedded SFT model is a Q4_1 GGUF, and its fp32 weights are that file de-quantized: in each
block of 32 inputs a weight is `d·q + m` with q in 0..15, every block spanning q = 0 to 15. ONNX Runtime's 4-bit
`MatMulNBits` stores `scale·(q - zero_point)` with an integer zero point, so re-quantizing `d·q + m` directly shifts
each block by up to d/2 (measured: next-token agreement 0.76). Subtracting from each block the offset
`c = min + 8·(max - min)/15` first leaves `d·(q - 8)`, which the quantizer's symmetric 4-bit rounding stores exactly
(scale d, its q); the offset comes back as a small float term, `blocksum(x) · C` (one value per block of 32 inputs
and output), added to the layer's output. Weights that were never 4-bit (a model of your own) get the same scheme:
4-bit blocks with a float offset, to within half a step.

What stays float: the LoRA slots (an adapter is applied per row at full precision) and the embedding lookup; the
output layer (the Q8_0 embedding, tied) is 8-bit. Activations are quantized per block of 32 inside `MatMulNBits`
(accuracy level 4): float activations are 8x slower on a CPU, and that rounding is what keeps the next-token
agreement with torch fp32 near 0.95 rather than 1 (docs/performance.md, "Quantized serving").
"""

from __future__ import annotations

import shutil
from pathlib import Path

BLOCK = 32
ACCURACY_LEVEL = 4  # int8 activations per block: the CPU's integer kernels (AVX2 / AVX-512 VNNI / AMX)
OUTPUT_LAYER = "/lm_head/MatMul"


def quantize_folder(fp32_dir: str | Path, out: str | Path) -> None:
    """Write the int4 copy of the ONNX folder `fp32_dir` (a build.py build, LoRA slots and all) into `out`."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    source, out = Path(fp32_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, out / f.name)
    model = onnx.load(str(source / "model.onnx"))
    graph = model.graph
    by_name = {init.name: init for init in graph.initializer}
    inputs = {i.name for i in graph.input}  # LoRA slots: initializers that are graph inputs, never quantized
    layers, output_layer, others = [], [], []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = by_name.get(node.input[1])
        fixed = weight is not None and node.input[1] not in inputs and "/lora_" not in node.name
        if fixed and node.name == OUTPUT_LAYER:
            output_layer.append(node.name)
        elif fixed and len(weight.dims) == 2 and weight.dims[0] % BLOCK == 0:
            layers.append(node)
        else:
            others.append(node.name)
    offsets = {}
    for node in layers:
        init = by_name[node.input[1]]
        weight = numpy_helper.to_array(init).astype(np.float32)  # [K, N]: the graph computes x @ W
        blocks = weight.reshape(weight.shape[0] // BLOCK, BLOCK, weight.shape[1])
        low, high = blocks.min(1), blocks.max(1)
        offset = (low + 8 * (high - low) / 15).astype(np.float32)  # [K/32, N]
        offsets[node.name] = offset
        init.CopyFrom(numpy_helper.from_array(weight - np.repeat(offset, BLOCK, axis=0), init.name))
    layer_names = [node.name for node in layers]
    if output_layer:
        model = _quantize(model, bits=8, exclude=layer_names + others)
    model = _quantize(model, bits=4, exclude=others + output_layer)
    _add_block_offsets(model.graph, offsets)
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data")


def _quantize(model, bits: int, exclude: list[str]):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=BLOCK, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=exclude
    )
    quantizer.process()
    return quantizer.model.model


def _add_block_offsets(graph, offsets: dict) -> None:
    """After each quantized layer whose MatMul had an offset, add `blocksum(x) @ C`. Layers reading the same input
    (q, k, v; gate, up) share one block sum."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    axes = "block_offset.axes"
    graph.initializer.append(numpy_helper.from_array(np.asarray([-1], dtype=np.int64), axes))
    sums: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        original = node.name.removesuffix("_Q4")
        if node.op_type != "MatMulNBits" or original not in offsets:
            continue
        offset = offsets[original]
        x, y = node.input[0], node.output[0]
        if x not in sums:
            shape = f"{x}/block_shape"
            graph.initializer.append(
                numpy_helper.from_array(np.asarray([0, 0, offset.shape[0], BLOCK], dtype=np.int64), shape)
            )
            sums[x] = f"{x}/block_sums"
            nodes += [
                onnx.helper.make_node("Reshape", [x, shape], [f"{x}/blocks"], name=f"{original}/Blocks"),
                onnx.helper.make_node(
                    "ReduceSum", [f"{x}/blocks", axes], [sums[x]], keepdims=0, name=f"{original}/BlockSums"
                ),
            ]
        table = f"{original}/block_offsets"
        graph.initializer.append(numpy_helper.from_array(offset, table))
        node.output[0] = f"{y}/quantized"
        nodes += [
            onnx.helper.make_node("MatMul", [sums[x], table], [f"{y}/offset"], name=f"{original}/OffsetMatMul"),
            onnx.helper.make_node("Add", [node.output[0], f"{y}/offset"], [y], name=f"{original}/OffsetAdd"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
