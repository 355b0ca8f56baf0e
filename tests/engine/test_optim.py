"""SEvo optimizers as a table of invariants."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from engine.optim import SEvoAdam, SEvoAdamW, SEvoSGD
from engine.sevo import Smoother
from graph_store import ItemGraph


def ring_graph(n: int, skip: tuple[int, ...] = (0,)) -> ItemGraph:
    nodes = np.array([i for i in range(n) if i not in skip])
    g = ItemGraph(n)
    g.add_edges(nodes, np.roll(nodes, 1), np.linspace(0.5, 2.0, nodes.size))
    return g


def tiny_model(seed: int, rows: int = 12, dim: int = 4):
    gen = torch.Generator().manual_seed(seed)
    table = torch.nn.Parameter(torch.randn(rows, dim, generator=gen))
    dense = torch.nn.Parameter(torch.randn(dim, 3, generator=gen))
    return table, dense


def loss_fn(table, dense, step: int, rows_used=None):
    gen = torch.Generator().manual_seed(100 + step)
    idx = rows_used if rows_used is not None else torch.arange(table.shape[0])
    x = table[idx] @ dense
    target = torch.randn(x.shape, generator=gen)
    return ((x - target) ** 2).mean()


def run_steps(opt, table, dense, steps, rows_used=None):
    for t in range(steps):
        opt.zero_grad()
        loss_fn(table, dense, t, rows_used).backward()
        opt.step()


def _lockstep(opt_a, params_a, opt_b, params_b, *, steps: int) -> None:
    """Step both optimizers on the same losses; the params stay equal after every step."""
    for t in range(steps):
        for opt, (table, dense) in ((opt_a, params_a), (opt_b, params_b)):
            opt.zero_grad()
            loss_fn(table, dense, t).backward()
            opt.step()
        for a, b in zip(params_a, params_b):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


CASES = [
    (SEvoAdamW, torch.optim.AdamW, {"lr": 1e-2, "betas": (0.9, 0.98), "weight_decay": 0.1}),
    (SEvoAdamW, torch.optim.AdamW, {"lr": 3e-3, "eps": 1e-6, "weight_decay": 0.0}),
    (SEvoAdam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.05}),
    (SEvoSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    (SEvoSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (SEvoSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.5, "dampening": 0.3}),
]


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), CASES)
@pytest.mark.parametrize("smoother_kind", ["none", "beta0", "L0"])
def test_identity_smoother_equals_torch_step_for_step(ours, theirs, kwargs, smoother_kind):
    graph = ring_graph(12, skip=())
    smoother = {"none": None, "beta0": Smoother(graph, beta=0.0), "L0": Smoother(graph, L=0)}
    a_table, a_dense = tiny_model(0)
    b_table, b_dense = tiny_model(0)
    opt_a = ours(
        [{"params": [a_table], "smoother": smoother[smoother_kind]}, {"params": [a_dense]}],
        **kwargs,
    )
    opt_b = theirs([b_table, b_dense], **kwargs)
    _lockstep(opt_a, (a_table, a_dense), opt_b, (b_table, b_dense), steps=8)


@pytest.mark.parametrize(("ours", "kwargs"), [(c[0], c[2]) for c in CASES])
def test_state_dict_round_trip_continues_in_lockstep(ours, kwargs):
    graph = ring_graph(12)
    a_table, a_dense = tiny_model(1)
    opt_a = ours(
        [{"params": [a_table], "smoother": Smoother(graph)}, {"params": [a_dense]}], **kwargs
    )
    run_steps(opt_a, a_table, a_dense, 3)
    buffer = io.BytesIO()
    torch.save({"opt": opt_a.state_dict(), "table": a_table.data, "dense": a_dense.data}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # no arbitrary unpickling
    b_table = torch.nn.Parameter(saved["table"].clone())
    b_dense = torch.nn.Parameter(saved["dense"].clone())
    b_smoother = Smoother(graph)
    opt_b = ours([{"params": [b_table], "smoother": b_smoother}, {"params": [b_dense]}], **kwargs)
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.param_groups[0]["smoother"] is b_smoother, "smoother stays attached"
    assert "smoother" not in saved["opt"]["param_groups"][0]
    for t in range(3, 6):
        for opt, table, dense in [(opt_a, a_table, a_dense), (opt_b, b_table, b_dense)]:
            opt.zero_grad()
            loss_fn(table, dense, t).backward()
            opt.step()
        assert torch.equal(a_table, b_table) and torch.equal(a_dense, b_dense)


@pytest.mark.parametrize("ours", [SEvoAdamW, SEvoAdam, SEvoSGD])
def test_zero_gradients_and_zero_weight_decay_change_nothing(ours):
    graph = ring_graph(12)
    table, dense = tiny_model(2)
    before = table.detach().clone(), dense.detach().clone()
    opt = ours(
        [{"params": [table], "smoother": Smoother(graph)}, {"params": [dense]}],
        lr=0.1,
        weight_decay=0.0,
    )
    for _ in range(3):
        table.grad = torch.zeros_like(table)
        dense.grad = torch.zeros_like(dense)
        opt.step()
    assert torch.equal(table, before[0]) and torch.equal(dense, before[1])


def test_unsampled_row_direction_repeats_from_step_two():
    graph = ring_graph(12)
    captured = []

    class Recorder:
        """An identity 'smoother' that records the pre-smoothing direction Δ."""

        def __call__(self, X):
            captured.append(X.clone())
            return X

    table, dense = tiny_model(3)
    opt = SEvoAdamW(
        [{"params": [table], "smoother": Recorder()}, {"params": [dense]}],
        lr=1e-2,
        weight_decay=0.1,
    )
    run_steps(opt, table, dense, 2)  # steps 1-2: every row sampled
    used = torch.tensor([1, 2, 3, 4, 5])  # rows 6.. are unsampled from step 3 on
    for t in range(2, 6):
        opt.zero_grad()
        loss_fn(table, dense, t, rows_used=used).backward()
        opt.step()
    deltas = torch.stack(captured)  # (steps, rows, dim)
    unsampled = deltas[1:, 6:]
    for k in range(1, unsampled.shape[0]):
        torch.testing.assert_close(unsampled[k], unsampled[0], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(deltas[2, 1:6], deltas[3, 1:6]), "sampled rows do change"
    _ = graph


def test_unsampled_rows_keep_moving_but_plain_adamw_would_not():
    table, dense = tiny_model(4)
    ref_table, ref_dense = tiny_model(4)
    identity = Smoother(ring_graph(12), beta=0.0)
    opt = SEvoAdamW(
        [{"params": [table], "smoother": identity}, {"params": [dense]}], lr=1e-2, weight_decay=0.0
    )
    ref = torch.optim.AdamW([ref_table, ref_dense], lr=1e-2, weight_decay=0.0)
    used = torch.tensor([0, 1, 2])
    run_steps(opt, table, dense, 1)
    run_steps(ref, ref_table, ref_dense, 1)
    snap, ref_snap = table.detach().clone(), ref_table.detach().clone()
    for t in range(1, 3):
        for o, tb, dn in [(opt, table, dense), (ref, ref_table, ref_dense)]:
            o.zero_grad()
            loss_fn(tb, dn, t, rows_used=used).backward()
            o.step()
    assert not torch.allclose(table[5:], snap[5:]), "SEvo-AdamW keeps unsampled rows evolving"
    # torch.optim.AdamW also moves rows with zero grads through m, but the directions differ:
    assert not torch.allclose(table[5:], ref_table[5:])
    _ = ref_snap


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_without_carrying_unsampled_rows_the_table_follows_torch_adamw(weight_decay):
    table, dense = tiny_model(4)
    ref_table, ref_dense = tiny_model(4)
    identity = Smoother(ring_graph(12), beta=0.0)
    opt = SEvoAdamW(
        [{"params": [table], "smoother": identity}, {"params": [dense]}],
        lr=1e-2,
        weight_decay=weight_decay,
        carry_unsampled=False,
    )
    ref = torch.optim.AdamW([ref_table, ref_dense], lr=1e-2, weight_decay=weight_decay)
    for rows in (None, torch.tensor([0, 1, 2]), torch.tensor([3, 7])):  # unsampled rows vary
        run_steps(opt, table, dense, 2, rows_used=rows)
        run_steps(ref, ref_table, ref_dense, 2, rows_used=rows)
    torch.testing.assert_close(table, ref_table)
    torch.testing.assert_close(dense, ref_dense)
    # the default (the paper's correction) differs on exactly those rows
    carried, _ = tiny_model(4)
    carried_dense = tiny_model(4)[1]
    paper = SEvoAdamW(
        [{"params": [carried], "smoother": identity}, {"params": [carried_dense]}],
        lr=1e-2,
        weight_decay=weight_decay,
    )
    for rows in (None, torch.tensor([0, 1, 2]), torch.tensor([3, 7])):
        run_steps(paper, carried, carried_dense, 2, rows_used=rows)
    assert not torch.allclose(carried[8:], table[8:])


def test_padding_row_only_moves_by_weight_decay():
    n = 12
    graph = ring_graph(n, skip=(0,))  # row 0 = padding, no edges
    table = torch.nn.Parameter(torch.randn(n, 4))
    table.data[0] = 1.0
    dense = torch.nn.Parameter(torch.randn(4, 3))
    lr, wd = 0.05, 0.1
    opt = SEvoAdamW(
        [{"params": [table], "smoother": Smoother(graph)}, {"params": [dense]}],
        lr=lr,
        weight_decay=wd,
    )
    used = torch.arange(1, n)
    for t in range(5):
        opt.zero_grad()
        loss_fn(table, dense, t, rows_used=used).backward()
        assert torch.all(table.grad[0] == 0)
        opt.step()
        expected = (1 - lr * wd) ** (t + 1)
        torch.testing.assert_close(table[0], torch.full((4,), expected), rtol=1e-6, atol=0)


def test_smoothed_update_lies_in_psi_of_direction():
    """P_after = P_before(1 − lr·wd) − lr·ψ(Δ) with the Δ the optimizer computed."""
    graph = ring_graph(12)
    captured = []
    psi = Smoother(graph)

    def recording(X):
        captured.append(X.clone())
        return psi(X)

    table, dense = tiny_model(5)
    lr, wd = 0.01, 0.1
    opt = SEvoAdamW(
        [{"params": [table], "smoother": recording}, {"params": [dense]}], lr=lr, weight_decay=wd
    )
    before = table.detach().clone()
    run_steps(opt, table, dense, 1)
    expected = before * (1 - lr * wd) - lr * psi(captured[0])
    torch.testing.assert_close(table.detach(), expected)


@pytest.mark.parametrize(("ours", "kwargs"), [(c[0], c[2]) for c in CASES])
def test_table_growth_mid_training(ours, kwargs):
    graph = ring_graph(10)
    table = torch.nn.Parameter(torch.randn(10, 4))
    dense = torch.nn.Parameter(torch.randn(4, 3))
    psi = Smoother(graph)
    opt = ours([{"params": [table], "smoother": psi}, {"params": [dense]}], **kwargs)
    run_steps(opt, table, dense, 3)
    old_rows = table.detach().clone()
    # 4 new items arrive: the same Parameter object grows, and the graph learns about two of them.
    table.data = torch.cat([table.data, torch.randn(4, 4)])
    graph.add_edges([10, 11], [1, 2])
    run_steps(opt, table, dense, 3)
    assert table.shape == (14, 4)
    assert torch.all(torch.isfinite(table))
    state = opt.state[table]
    for value in state.values():
        assert value.shape[0] == 14
    if "step" in state:
        assert torch.all(state["step"][:10] == 6) and torch.all(state["step"][10:] == 3)
    assert not torch.allclose(table[:10], old_rows)


def test_new_rows_get_fresh_adam_state():
    """A row born at step 4 takes the same first step as a fresh AdamW parameter would."""
    graph = ring_graph(6, skip=())
    table = torch.nn.Parameter(torch.zeros(6, 2))
    opt = SEvoAdamW(
        [{"params": [table], "smoother": Smoother(graph, beta=0.0)}], lr=0.1, weight_decay=0.0
    )
    for _ in range(4):
        table.grad = torch.ones_like(table)
        opt.step()
    table.data = torch.cat([table.data, torch.zeros(1, 2)])
    table.grad = torch.ones_like(table)
    opt.step()
    torch.testing.assert_close(table[6], torch.full((2,), -0.1))  # Adam's first step: -lr·sign(g)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda p: SEvoAdamW([p], lr=-1.0), "Invalid learning rate"),
        (lambda p: SEvoAdamW([p], betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
        (lambda p: SEvoAdamW([p], betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
        (lambda p: SEvoAdamW([p], eps=-1e-8), "Invalid epsilon value"),
        (lambda p: SEvoAdam([p], weight_decay=-0.1), "Invalid weight_decay value"),
        (lambda p: SEvoSGD([p], momentum=-0.5), "Invalid momentum value"),
        (lambda p: SEvoSGD([p], nesterov=True), "Nesterov momentum requires"),
        (lambda p: SEvoAdamW([{"params": [p], "smoother": 3}]), "must be callable"),
        (
            lambda p: SEvoAdamW(
                [{"params": [torch.nn.Parameter(torch.ones(3))], "smoother": lambda x: x}]
            ),
            "2-D tables",
        ),
    ],
)
def test_bad_arguments_raise_with_pinned_messages(factory, message):
    with pytest.raises(ValueError, match=message):
        factory(torch.nn.Parameter(torch.ones(3, 2)))


def test_stacked_group_smooths_users_and_items_on_one_graph():
    """Users stacked on items: ψ sees one (U+I, d) matrix and couples the two tables."""
    users = torch.nn.Parameter(torch.zeros(3, 2))
    items = torch.nn.Parameter(torch.zeros(4, 2))
    graph = ItemGraph(7)
    graph.add_edges([0, 1, 2], [3, 4, 5])  # user u ↔ item row 3+u
    opt = SEvoSGD([{"params": [users, items], "smoother": Smoother(graph, beta=0.9, L=2)}], lr=1.0)
    users.grad = torch.zeros(3, 2)
    items.grad = torch.zeros(4, 2)
    items.grad[0] = 1.0  # only item row 0 (node 3) has a gradient
    opt.step()
    assert users[0].abs().sum() > 0, "the gradient of node 3 spreads to its neighbour, user 0"
    assert torch.all(users[1:] == 0) and torch.all(items[1:] == 0)


def test_plain_groups_run_the_fused_kernel_and_match_torch_with_mixed_dtypes():
    from engine.optim import _kernel_choice

    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    steps = [torch.zeros(()), torch.zeros(())]
    assert _kernel_choice([a], steps[:1]) == {"fused": True}
    assert _kernel_choice([a, b], steps) == {}, "one dtype per fused call, else torch's default"
    assert _kernel_choice([a], [torch.zeros((), dtype=torch.float64)]) == {}
    # Either way the plain group equals torch.optim.AdamW.
    a2 = torch.nn.Parameter(a.detach().clone())
    b2 = torch.nn.Parameter(b.detach().clone())
    ours = SEvoAdamW([{"params": [a, b]}], lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.AdamW([a2, b2], lr=1e-2, weight_decay=0.1)
    for t in range(5):
        gen = torch.Generator().manual_seed(t)
        ga, gb = torch.randn(5, 3, generator=gen), torch.randn(3, generator=gen).double()
        for opt, x, y in [(ours, a, b), (theirs, a2, b2)]:
            x.grad, y.grad = ga.clone(), gb.clone()
            opt.step()
        torch.testing.assert_close(a, a2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, b2, rtol=1e-10, atol=1e-12)


def _adamw_state(rows: tuple[int, ...], dim: int, seed: int, steps: tuple[int, ...]):
    """Tables with non-trivial moments and per-row step counts (``steps[i]`` for table i)."""
    gen = torch.Generator().manual_seed(seed)
    tables, ms, vs, ts = [], [], [], []
    for n, t in zip(rows, steps):
        tables.append(torch.randn(n, dim, generator=gen))
        ms.append(torch.randn(n, dim, generator=gen) * 0.1)
        vs.append(torch.rand(n, dim, generator=gen) * 0.01)
        ts.append(torch.full((n, 1), float(t)))
    return tables, ms, vs, ts


def _sparse_grads(tables, step: int):
    """Gradients with whole zero rows (unsampled), different ones at every step; at step 2 the
    second table gets no gradient at all and at step 3 every row is sampled."""
    gen = torch.Generator().manual_seed(1000 + step)
    grads = []
    for i, p in enumerate(tables):
        g = torch.randn(p.shape, generator=gen)
        keep = torch.rand(p.shape[0], 1, generator=gen) < 0.4
        if step == 2 and i == 1:
            keep[:] = False
        if step == 3:
            keep[:] = True
        grads.append(g * keep)
    return grads


@pytest.mark.parametrize("rows", [(30,), (7, 23)], ids=["one-table", "stacked"])
def test_fused_route_equals_general_route(rows):
    """sevo_adamw's fused route (torch's fused Adam kernel into a reused buffer) and its general
    route give the same params, moments and steps, with unsampled rows and a grown table."""
    from engine.optim import sevo_adamw

    graph = ring_graph(sum(rows))
    psi = Smoother(graph, beta=0.9, L=2)
    hyper = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.98, "eps": 1e-8, "weight_decay": 0.1}
    runs = {route: _adamw_state(rows, 5, seed=0, steps=(0,) * len(rows)) for route in (1, 0)}
    workspace: dict = {}
    for step in range(6):
        if step == 4:  # a table grows: its new rows start at step 0, so rows now differ
            graph.grow(sum(rows) + 3)
            graph.add_edges([sum(rows) - 1, sum(rows)], [sum(rows) + 1, 0])
            for tables, ms, vs, ts in runs.values():
                extra = torch.randn(3, 5, generator=torch.Generator().manual_seed(7))
                tables[-1] = torch.cat([tables[-1], extra])
                ms[-1], vs[-1] = (
                    torch.cat([ms[-1], torch.zeros(3, 5)]),
                    torch.cat([vs[-1], torch.zeros(3, 5)]),
                )
                ts[-1] = torch.cat([ts[-1], torch.zeros(3, 1)])
        grads = _sparse_grads(runs[1][0], step)
        for route, (tables, ms, vs, ts) in runs.items():
            fused = bool(route) if step < 4 else None  # after growth: the automatic choice
            kwargs = {"workspace": workspace} if route else {}
            sevo_adamw(tables, grads, ms, vs, ts, smoother=psi, fused=fused, **hyper, **kwargs)
        for fused_part, general_part in zip(runs[1], runs[0]):
            for a, b in zip(fused_part, general_part):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if len(rows) > 1:  # the table that did not grow still takes the fused route
        assert workspace[runs[1][0][0]].shape == (rows[0], 5)
    tables, ms, vs, ts = runs[1]
    with pytest.raises(RuntimeError, match="rows share one step count"):
        sevo_adamw(tables, _sparse_grads(tables, 9), ms, vs, ts, smoother=psi, fused=True, **hyper)


def test_fused_route_is_not_optimizer_state():
    """The fused route's buffers live outside the state: state_dict keeps its three tensors."""
    graph = ring_graph(12)
    table, dense = tiny_model(3)
    opt = SEvoAdamW([{"params": [table], "smoother": Smoother(graph)}, {"params": [dense]}])
    run_steps(opt, table, dense, 2, rows_used=torch.tensor([1, 2, 5]))
    state = opt.state_dict()["state"]
    assert set(state[0]) == {"step", "exp_avg", "exp_avg_sq"} and state[0]["step"].shape == (12, 1)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), CASES[:3])
def test_torch_releases_without_decoupled_adam_take_the_functional_adamw(
    ours, theirs, kwargs, monkeypatch
):
    """Before torch 2.6 the functional Adam has no ``decoupled_weight_decay``: the optimizers
    then call torch's functional AdamW, with the same result as torch.optim's classes."""
    import engine.optim as optim

    monkeypatch.setattr(optim, "_ADAM_DECOUPLES", False)
    new_adam = optim._torch_adam_fn

    def old_adam(*args, **kwargs):
        assert "decoupled_weight_decay" not in kwargs
        return new_adam(*args, **kwargs)

    monkeypatch.setattr(optim, "_torch_adam_fn", old_adam)
    graph = ring_graph(12, skip=())
    a_table, a_dense = tiny_model(0)
    b_table, b_dense = tiny_model(0)
    opt_a = ours(
        [{"params": [a_table], "smoother": Smoother(graph, beta=0.0)}, {"params": [a_dense]}],
        **kwargs,
    )
    opt_b = theirs([b_table, b_dense], **kwargs)
    _lockstep(opt_a, (a_table, a_dense), opt_b, (b_table, b_dense), steps=5)


# ---------------------------------------------------------------------- smooth="gradient"
def path_graph(n: int) -> ItemGraph:
    """0-1-2-...-(n-1): row i's L-hop neighbourhood is easy to name."""
    g = ItemGraph(n)
    g.add_edges(np.arange(n - 1), np.arange(1, n))
    return g


def test_gradient_smoothing_steps_only_the_l_hop_neighbourhood_and_keeps_other_state():
    n, L = 12, 2
    table = torch.nn.Parameter(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)))
    smoother = Smoother(path_graph(n), beta=0.9, L=L)
    opt = SEvoAdamW(
        [{"params": [table], "smoother": smoother}], lr=0.1, weight_decay=0.1, smooth="gradient"
    )
    before = table.detach().clone()
    grad = torch.zeros(n, 3)
    grad[5] = torch.tensor([1.0, -2.0, 0.5])  # only row 5 is sampled
    table.grad = grad
    opt.step()
    moved = (table.detach() != before).any(dim=1)
    assert moved.nonzero().view(-1).tolist() == [3, 4, 5, 6, 7]  # rows within L hops of 5
    state = opt.state[table]
    assert state["step"].view(-1).tolist() == [float(3 <= i <= 7) for i in range(n)]
    assert state["exp_avg"][~moved].abs().sum() == 0 and state["exp_avg_sq"][~moved].sum() == 0
    # The first step of a row is AdamW's: Δ = ψ(G)/|ψ(G)| elementwise (up to ε), plus decay.
    g_tilde = smoother(grad)
    expected = before * (1 - 0.1 * 0.1) - 0.1 * g_tilde / (g_tilde.abs() + 1e-8)
    assert torch.allclose(table.detach()[moved], expected[moved], atol=1e-6)


@pytest.mark.parametrize("dense_share", [0.0, 2.0], ids=["masked", "gathered"])
def test_gradient_smoothing_with_identity_smoother_is_lazy_adamw(monkeypatch, dense_share):
    """β = 0 makes ψ the identity: a row takes AdamW steps only when it has a gradient, and its
    t-th own step equals torch's AdamW at step t (its state is untouched in between). Both
    routes of the lazy step (whole table with per-row factors, gathered rows) are checked."""
    import engine.optim as optim

    monkeypatch.setattr(optim, "_DENSE_LAZY_SHARE", dense_share)
    n = 6
    table = torch.nn.Parameter(torch.randn(n, 4, generator=torch.Generator().manual_seed(1)))
    opt = SEvoAdamW(
        [{"params": [table], "smoother": Smoother(ring_graph(n), beta=0.0)}],
        lr=0.05,
        weight_decay=0.01,
        smooth="gradient",
    )
    ref_row = torch.nn.Parameter(table.detach()[2:3].clone())
    ref = torch.optim.AdamW([ref_row], lr=0.05, weight_decay=0.01)
    gen = torch.Generator().manual_seed(2)
    for step in range(8):
        grad = torch.zeros(n, 4)
        if step % 3 != 1:  # row 2 is missing from every third batch
            grad[2] = torch.randn(4, generator=gen)
            ref_row.grad = grad[2:3].clone()
            ref.step()
        table.grad = grad
        opt.step()
        assert torch.allclose(table.detach()[2:3], ref_row.detach(), atol=1e-6)
    assert torch.equal(opt.state[table]["step"].view(-1)[[0, 2]], torch.tensor([0.0, 5.0]))


def test_gradient_smoothing_state_dict_round_trip_continues_in_lockstep():
    def build():
        table = torch.nn.Parameter(torch.randn(8, 3, generator=torch.Generator().manual_seed(3)))
        smoother = Smoother(path_graph(8), beta=0.9, L=1)
        return table, SEvoAdamW(
            [{"params": [table], "smoother": smoother}], lr=0.01, smooth="gradient"
        )

    def step(table, opt, i):
        grad = torch.zeros(8, 3)
        grad[i % 8] = 1.0
        table.grad = grad
        opt.step()

    a, opt_a = build()
    for i in range(3):
        step(a, opt_a, i)
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    b, opt_b = build()
    b.data.copy_(a.detach())
    buf.seek(0)
    opt_b.load_state_dict(torch.load(buf, weights_only=True))
    for i in range(3, 7):
        step(a, opt_a, i)
        step(b, opt_b, i)
    assert torch.equal(a.detach(), b.detach())


def test_gradient_smoothing_masked_and_gathered_routes_agree(monkeypatch):
    import engine.optim as optim

    def run(dense_share):
        monkeypatch.setattr(optim, "_DENSE_LAZY_SHARE", dense_share)
        table = torch.nn.Parameter(torch.randn(20, 4, generator=torch.Generator().manual_seed(5)))
        opt = SEvoAdamW(
            [{"params": [table], "smoother": Smoother(path_graph(20), beta=0.9, L=2)}],
            lr=0.01,
            weight_decay=0.1,
            smooth="gradient",
        )
        gen = torch.Generator().manual_seed(6)
        for _ in range(10):
            grad = torch.zeros(20, 4)
            rows = torch.randperm(20, generator=gen)[:3]
            grad[rows] = torch.randn(3, 4, generator=gen)
            table.grad = grad
            opt.step()
        return table.detach(), opt.state[table]

    (a, sa), (b, sb) = run(0.0), run(2.0)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(sa["step"], sb["step"])
    assert torch.allclose(sa["exp_avg"], sb["exp_avg"]) and torch.allclose(
        sa["exp_avg_sq"], sb["exp_avg_sq"]
    )


def test_smooth_target_is_validated():
    with pytest.raises(ValueError, match="smooth must be one of"):
        SEvoAdamW([torch.nn.Parameter(torch.zeros(2, 2))], smooth="both")
