"""Counter-Current learning against an independent, written-out formulation of the paper's
equations (ALGORITHMS.md section 2), in float64:

    a_l = act(U_l sg(a_{l-1})),  a_0 = x        b_{l-1} = act(V_l sg(b_l)),  b_L = target

with the top forward map and the bottom feedback map linear. The reference below reads
only the parameter tensors of the module; every map is spelt out with ``torch.nn.functional``
(convolutions, pooling, upsampling, batch-norm) in the paper's order (e.g. activation
before pooling), not through the library's layers. Checked: every local loss, and every
parameter's update after one real training step (warm-up, gradient centralisation and
the per-network gradient-norm clip included), for the MLP, the pooled CNN, the strided
``ConvNet`` and the autoencoder.
"""

from __future__ import annotations

import copy
import pickle
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lit_bioplaus.algorithms import CounterCurrent
from lit_bioplaus.nn import MLP, ConvAutoencoder, ConvNet, PooledConvNet

INPUT_SHAPE, NUM_CLASSES, BATCH = (2, 8, 8), 5, 6
sg = Tensor.detach


# --- the reference: one function per architecture, parameters in, local losses out --------
def dot_loss(a: Tensor, b: Tensor, labels: Tensor, scale: float) -> Tensor:
    a, b = a.flatten(1), b.flatten(1)
    return scale * ((a @ b.T - labels) ** 2).mean() / a.shape[1]


def cosine_loss(a: Tensor, b: Tensor, labels: Tensor, scale: float, anti_collapse: float) -> Tensor:
    a = a.flatten(1) / a.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b.flatten(1) / b.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12)
    loss = scale * ((a @ b.T - labels) ** 2).mean()
    eye_a, eye_b = torch.eye(a.shape[0], dtype=a.dtype), torch.eye(b.shape[0], dtype=b.dtype)
    return loss + anti_collapse * (((a @ a.T - eye_a) ** 2).mean() + ((b @ b.T - eye_b) ** 2).mean())


def classification_losses(forward: list[Tensor], feedback: list[Tensor], logits: Tensor, y: Tensor, options) -> list:
    """Pair losses at every point but the output, then the cross-entropy of the logits."""
    labels = F.one_hot(y, NUM_CLASSES).to(logits.dtype)
    if options.get("target_filter") is not None:
        confidence = sg(logits).softmax(1)[torch.arange(len(y)), y]
        keep = (confidence <= 1 - options["target_filter"]).to(logits.dtype)
        forward = [a * keep.view(-1, *[1] * (a.dim() - 1)) for a in forward]
    if options.get("similarity") == "cosine":
        scale, anti = options["similarity_scale"], options["anti_collapse_scale"]
        pairs = [cosine_loss(a, b, labels, scale, anti) for a, b in zip(forward, feedback, strict=True)]
    else:
        pairs = [
            dot_loss(a, b, labels, options.get("similarity_scale", 128.0))
            for a, b in zip(forward, feedback, strict=True)
        ]
    ce = -(logits.log_softmax(1) * labels).sum(1).mean()
    return [*pairs, ce]


def mlp_reference(p: dict, x: Tensor, y: Tensor, options: dict) -> list[Tensor]:
    """784-...-C MLP with biases and ELU: ``a_l = elu(a W^T + c)``, ``b_{l-1} = elu(b V + d)``."""
    n = len(p["W"])
    forward = [x.flatten(1)]
    for layer in range(n - 1):
        forward.append(F.elu(sg(forward[-1]) @ p["W"][layer].T + p["c"][layer]))
    logits = sg(forward[-1]) @ p["W"][-1].T + p["c"][-1]
    feedback = [torch.eye(NUM_CLASSES, dtype=x.dtype)]
    for layer in reversed(range(n)):
        b = sg(feedback[0]) @ p["V"][layer] + p["d"][layer]
        feedback.insert(0, F.elu(b) if layer > 0 else b)
    return classification_losses(forward, feedback[:-1], logits, y, options)


def upsample_conv(b: Tensor, v: Tensor) -> Tensor:
    """The CCL feedback map of a 3x3 conv: nearest x2 upsampling, then a 3x3 'same'
    convolution from the conv's output channels back to its input channels."""
    up = b.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return F.conv2d(up, v.transpose(0, 1).flip(2, 3), padding=1)


def pooled_cnn_reference(p: dict, x: Tensor, y: Tensor, options: dict) -> list[Tensor]:
    """conv3x3 -> ELU -> maxpool2 per stage (no biases), linear head; feedback: head^T
    -> ELU, then per stage upsample + conv -> ELU, the lowest without ELU."""
    convs, head, head_v = p["W"][:-1], p["W"][-1], p["V"][-1]
    forward = [x]
    for w in convs:
        forward.append(F.max_pool2d(F.elu(F.conv2d(sg(forward[-1]), w, padding=1)), 2))
    logits = sg(forward[-1]).flatten(1) @ head.T
    top = torch.eye(NUM_CLASSES, dtype=x.dtype)
    feedback = [F.elu((top @ head_v).view(NUM_CLASSES, *forward[-1].shape[1:]))]
    for layer in reversed(range(len(convs))):
        b = upsample_conv(sg(feedback[0]), p["V"][layer])
        feedback.insert(0, F.elu(b) if layer > 0 else b)
    return classification_losses(forward, feedback, logits, y, options)


def strided_cnn_reference(p: dict, x: Tensor, y: Tensor, options: dict) -> list[Tensor]:
    """ConvNet: conv3x3 stride 2 pad 1 -> ELU per stage (biases), linear head; the
    feedback of a conv is the transposed convolution of its feedback weight, with the
    output padding that restores the input size."""
    convs = list(zip(p["W"][:-1], p["c"][:-1], strict=True))
    forward, sizes = [x], []
    for w, c in convs:
        sizes.append(forward[-1].shape[2:])
        forward.append(F.elu(F.conv2d(sg(forward[-1]), w, c, stride=2, padding=1)))
    logits = sg(forward[-1]).flatten(1) @ p["W"][-1].T + p["c"][-1]
    top = torch.eye(NUM_CLASSES, dtype=x.dtype)
    feedback = [F.elu((top @ p["V"][-1] + p["d"][-1]).view(NUM_CLASSES, *forward[-1].shape[1:]))]
    for layer in reversed(range(len(convs))):
        h_out = feedback[0].shape[2:]
        pad = [s - ((o - 1) * 2 - 2 + 3) for s, o in zip(sizes[layer], h_out, strict=True)]
        b = F.conv_transpose2d(sg(feedback[0]), p["V"][layer], p["d"][layer], stride=2, padding=1, output_padding=pad)
        feedback.insert(0, F.elu(b) if layer > 0 else b)
    return classification_losses(forward, feedback, logits, y, options)


def batch_norm(z: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    mean, var = z.mean(dim=(0, 2, 3), keepdim=True), z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + 1e-5) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def autoencoder_reference(p: dict, x: Tensor, y: Tensor, options: dict) -> list[Tensor]:
    """Encoder: conv3x3 stride 2 -> BN -> ReLU; decoder: upsample + conv -> BN -> ReLU, the
    last without BN and ReLU. The feedback network mirrors it: the decoder's feedback is a
    strided conv, the encoder's an upsample + conv, each followed by its own BN and ReLU
    but the lowest. Loss: MSE between the streams at every point, output included."""
    depth = len(p["W"]) // 2
    forward = [x]
    for layer in range(2 * depth):
        z = F.conv2d(sg(forward[-1]), p["W"][layer], stride=2, padding=1) if layer < depth else None
        if z is None:  # decoder: the mirrored layer's upsample + conv on its feedback weight
            z = upsample_conv(sg(forward[-1]), p["Wd"][layer - depth])
        last = layer == 2 * depth - 1
        forward.append(z if last else F.relu(batch_norm(z, *p["bn_up"][layer])))
    feedback = [x]  # b_L = the image itself
    for layer in reversed(range(2 * depth)):
        if layer >= depth:  # decoder: its feedback is the strided conv of the mirrored layer
            z = F.conv2d(sg(feedback[0]), p["Vd"][layer - depth], stride=2, padding=1)
        else:
            z = upsample_conv(sg(feedback[0]), p["V"][layer])
        feedback.insert(0, F.relu(batch_norm(z, *p["bn_down"][layer - 1])) if layer > 0 else z)
    return [((a - b) ** 2).mean() for a, b in zip(forward, feedback, strict=True)]


# --- the library's models and the tensors the reference reads -----------------------------
# (network factories are partials, not lambdas, so the modules pickle)
CASES = {
    "mlp": (partial(MLP, hidden=[9, 7], activation="elu", weight_mode="asymmetric"), mlp_reference, {}),
    "pooled_cnn": (partial(PooledConvNet, channels=[3, 4]), pooled_cnn_reference, {}),
    "pooled_cnn_cosine": (
        partial(PooledConvNet, channels=[3, 4]),
        pooled_cnn_reference,
        {"similarity": "cosine", "similarity_scale": 1.0, "anti_collapse_scale": 0.5, "target_filter": 0.1},
    ),
    "strided_cnn": (
        partial(ConvNet, channels=[3, 4], activation="elu", weight_mode="asymmetric"),
        strided_cnn_reference,
        {},
    ),
    "autoencoder": (partial(ConvAutoencoder, channels=[3, 4]), autoencoder_reference, {"task": "autoencoder"}),
}


def make_model(name: str, **extra) -> CounterCurrent:
    network, _, options = CASES[name]
    torch.manual_seed(0)
    return CounterCurrent(
        network=network, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, **options, **extra
    ).double()


def reference_parameters(model: CounterCurrent) -> dict:
    """The module's parameter tensors, by role (read, not computed with)."""
    from lit_bioplaus.nn import TwoStreamBatchNorm, TwoStreamMirror

    p = {key: [] for key in ("W", "c", "V", "d", "Wd", "Vd", "bn_up", "bn_down")}
    for module in model.network:
        if isinstance(module, TwoStreamMirror):
            p["Wd"].append(module.layer._feedback_weight)
            p["Vd"].append(module.layer.weight)
            p["W"].append(None)
        elif hasattr(module, "weight"):
            p["W"].append(module.weight)
            p["c"].append(module.bias)
            p["V"].append(module._feedback_weight)
            p["d"].append(module.feedback_bias)
        elif isinstance(module, TwoStreamBatchNorm):
            p[f"bn_{module.stream}"].append((module.norm.weight, module.norm.bias))
    return p


def data(model: CounterCurrent) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, *INPUT_SHAPE, generator=generator, dtype=torch.float64)
    return x, torch.arange(BATCH) % NUM_CLASSES


def reference_losses(name: str, model: CounterCurrent, x: Tensor, y: Tensor) -> list[Tensor]:
    _, reference, options = CASES[name]
    return reference(reference_parameters(model), x, y, options)


@pytest.mark.parametrize("name", CASES)
def test_local_losses_and_gradients_match_the_written_out_equations(name):
    model = make_model(name)
    x, y = data(model)
    target = x if model.task == "autoencoder" else y
    losses, _ = model.local_losses(x, target)
    expected = reference_losses(name, model, x, y)
    assert len(losses) == len(expected)
    params = list(model.parameters())
    for k, (loss, reference) in enumerate(zip(losses, expected, strict=True)):
        torch.testing.assert_close(loss, reference, rtol=0, atol=1e-10, msg=f"local loss {k}")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        reference_grads = torch.autograd.grad(reference, params, allow_unused=True)
        for param, grad, ref in zip(params, grads, reference_grads, strict=True):
            grad = torch.zeros_like(param) if grad is None else grad
            ref = torch.zeros_like(param) if ref is None else ref
            torch.testing.assert_close(grad, ref, rtol=0, atol=1e-10, msg=f"loss {k}, parameter {tuple(param.shape)}")


# --- one real training step: warm-up, centralisation and clip included ---------------------
STEP_OPTIONS = {
    "warmup_steps": 4,
    "gradient_centralization": True,
    "gradient_clip_val": 0.05,
    "feedback_gradient_clip_val": 100.0,  # fires for the forward network only, so the warm-up shows
    "optimizer": partial(torch.optim.SGD, lr=1.0),
    "feedback_optimizer": partial(torch.optim.SGD, lr=1.0),
}


def train_one_batch(model: CounterCurrent, x: Tensor, y: Tensor) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        precision="64-true",
        max_epochs=1,  # one batch (the data is one batch)
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=BATCH))


def fan_in_dims(param: Tensor, is_feedback: bool) -> tuple[int, ...]:
    """Inputs of the map a weight belongs to: dim 1 (and the kernel) of a forward weight;
    a feedback weight, stored in the forward layout, reads dim 0 (and the kernel)."""
    output_dim = 1 if is_feedback else 0
    return tuple(d for d in range(param.dim()) if d != output_dim)


def expected_step(name: str, model: CounterCurrent, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The parameters after one SGD(lr=1) step from the reference's gradients, warmed up
    (factor 1/4 on the first batch), centralised, and clipped per network (global 2-norm)."""
    objective = torch.stack(reference_losses(name, model, x, y)).sum() / 4
    named = dict(model.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(objective, list(named.values()), allow_unused=True), strict=True))
    grads = {k: torch.zeros_like(named[k]) if g is None else g for k, g in grads.items()}
    feedback_ids = {id(p) for p in model.network.down_parameters()}
    for key, grad in grads.items():
        if grad.dim() > 1:
            is_feedback_weight = key.endswith("_feedback_weight")
            grads[key] = grad - grad.mean(dim=fan_in_dims(grad, is_feedback_weight), keepdim=True)
    is_feedback = {k: id(named[k]) in feedback_ids for k in named}
    for clip, feedback in (
        (STEP_OPTIONS["gradient_clip_val"], False),
        (STEP_OPTIONS["feedback_gradient_clip_val"], True),
    ):
        keys = [k for k in grads if is_feedback[k] == feedback]
        norm = torch.sqrt(sum((grads[k] ** 2).sum() for k in keys))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for k in keys:
            grads[k] = grads[k] * factor
    return {k: (named[k] - grads[k]).detach() for k in named}


@pytest.mark.parametrize("merge_optimizers", [None, False], ids=["one_optimizer", "two_optimizers"])
@pytest.mark.parametrize("name", CASES)
def test_training_step_matches_the_written_out_update(name, merge_optimizers):
    """Both layouts (a parameter group per network, or an optimizer per network) make
    the written-out update, each network clipped to its own norm."""
    model = make_model(name, **STEP_OPTIONS, merge_optimizers=merge_optimizers)
    x, y = data(model)
    expected = expected_step(name, model, x, y)
    train_one_batch(model, x, y)
    assert len(model.trainer.optimizers) == (2 if merge_optimizers is False else 1)
    assert model.trainer.global_step == len(model.trainer.optimizers)  # one batch
    for key, param in model.named_parameters():
        torch.testing.assert_close(param, expected[key], rtol=0, atol=1e-10, msg=key)


MULTI_STEP_OPTIONS = {  # each network its own Adam settings and clip (both fire), one schedule
    "optimizer": partial(torch.optim.Adam, lr=1e-2, betas=(0.8, 0.9), weight_decay=1e-3),
    "feedback_optimizer": partial(torch.optim.Adam, lr=3e-3, betas=(0.9, 0.99)),
    "lr_scheduler": partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5),
    "feedback_lr_scheduler": partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5),
    "scheduler_interval": "step",
    "gradient_clip_val": 1e-3,
    "feedback_gradient_clip_val": 1e-2,
    "warmup_steps": 3,
}


@pytest.mark.parametrize("name", ["mlp", "pooled_cnn"])
def test_one_optimizer_and_two_make_the_same_updates_over_several_steps(name):
    """Four batches with per-network optimizer settings, clips and a per-step schedule:
    a parameter group per network makes exactly what an optimizer per network makes."""
    x, y = data(make_model(name))
    x, y = torch.cat([x] * 4) + torch.arange(4 * BATCH, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1)) / 100, y.repeat(4)
    runs = {}
    for merge in (None, False):
        model = make_model(name, **MULTI_STEP_OPTIONS, merge_optimizers=merge)
        before = [p.detach().clone() for p in model.parameters()]
        quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
        trainer = L.Trainer(accelerator="cpu", precision="64-true", max_epochs=1, enable_model_summary=False, **quiet)
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=BATCH))
        assert len(trainer.optimizers) == (1 if merge is None else 2)
        assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
        lrs = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        runs[merge] = ([p.detach() for p in model.parameters()], lrs)
    assert runs[None][1] == runs[False][1] == [1e-2 / 16, 3e-3 / 16]
    for merged, apart in zip(runs[None][0], runs[False][0], strict=True):
        torch.testing.assert_close(merged, apart, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["pooled_cnn", "autoencoder"])
def test_copies_and_pickles_make_the_same_update(name):
    """Nothing is keyed by object identity: a deep copy and a pickled module centralise."""
    model = make_model(name, **STEP_OPTIONS)
    x, y = data(model)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    train_one_batch(model, x, y)
    for other in copies:
        train_one_batch(other, x, y)
        for (key, param), reference in zip(other.named_parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(param, reference, rtol=0, atol=0, msg=key)
