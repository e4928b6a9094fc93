"""Attention capture: Model.attention (engine, zp_capture) against reference_attention (NumPy,
float64, full committed teacher-forced pass), over E = 0 / E = 1, grouped-query attention and a
masked t2i prefix."""

import numpy as np
import pytest

import zipar
from zipar.reference import ReferenceModel, reference_attention

TOL = 1e-5

CONFIGS = [
    # (dim, n_layer, n_head, n_kv_head, vocab, grid, eor)
    (32, 2, 2, 2, 23, (3, 4), 0),     # plain multi-head, E = 0
    (64, 2, 4, 2, 29, (4, 4), 0),     # grouped-query 2:1
    (32, 2, 4, 1, 19, (3, 5), 1),     # grouped-query 4:1, end-of-row token
    (32, 1, 2, 2, 17, (2, 3), 1),     # E = 1, one layer
]


def make(cfgt, seed=0):
    dim, L, nh, nkv, V, grid, eor = cfgt
    m = zipar.random_model(dim=dim, n_layer=L, n_head=nh, n_kv_head=nkv, vocab_size=V, grid=grid,
                           num_classes=5, eor=eor, eor_token=V - 1 if eor else 0, seed=seed)
    return m, ReferenceModel(m.config, m.weights)


def query_positions(c, cells):
    return np.array([c.cell_pos(int(r), int(col)) for r, col in cells])


@pytest.mark.parametrize("cfgt", CONFIGS)
def test_engine_matches_reference_all_cells(cfgt):
    m, ref = make(cfgt)
    c = m.config
    rng = np.random.default_rng(3)
    toks = rng.integers(0, c.vocab_size, (2, c.H, c.W))
    labels = [1, 4]
    got = m.attention(labels, toks)
    want = reference_attention(ref, labels, toks)
    assert got.shape == want.shape == (2, c.H * c.W, c.n_layer, c.n_head, c.seq_len)
    assert got.dtype == np.float32 and want.dtype == np.float64
    assert np.abs(got - want).max() <= TOL
    # rows are distributions
    assert np.abs(got.sum(axis=-1) - 1).max() <= TOL
    assert np.abs(want.sum(axis=-1) - 1).max() <= 1e-12
    assert (got >= 0).all()
    # nothing after the query is visible: exactly 0
    cells = [(r, col) for r in range(c.H) for col in range(c.W)]
    qpos = query_positions(c, cells)
    after = np.arange(c.seq_len)[None, :] > qpos[:, None]                # (cells, seq_len)
    after = np.broadcast_to(after[None, :, None, None, :], got.shape)
    assert (got[after] == 0).all() and (want[after] == 0).all()
    # everything up to the query is visible (all slots committed): strictly positive
    assert (got[~after] > 0).all()
    if c.eor:  # end-of-row slots of earlier rows take part in attention
        eor_slot = c.cell_pos(0, c.W)
        assert (got[:, qpos > eor_slot][..., eor_slot] > 0).all()


@pytest.mark.parametrize("cfgt", CONFIGS[1:3])
def test_selected_cells_layers_heads_and_order(cfgt):
    m, ref = make(cfgt, seed=1)
    c = m.config
    rng = np.random.default_rng(4)
    toks = rng.integers(0, c.vocab_size, (3, c.H, c.W))
    labels = [0, 2, 4]
    cells = [(c.H - 1, c.W - 1), (0, 0), (1, 2)]
    layers = [c.n_layer - 1, 0]
    heads = [c.n_head - 1, 0]
    got = m.attention(labels, toks, cells=cells, layers=layers, heads=heads)
    want = reference_attention(ref, labels, toks, cells, layers, heads)
    assert got.shape == (3, 3, 2, 2, c.seq_len)
    assert np.abs(got - want).max() <= TOL
    # the selection is a slice of the full capture
    full = m.attention(labels, toks)
    idx = [r * c.W + col for r, col in cells]
    sub = full[:, idx][:, :, layers][:, :, :, heads]
    assert np.abs(got - sub).max() <= 1e-6
    # the first cell's query sees the conditioning position and itself only
    first = got[:, 1]
    assert np.abs(first[..., :c.cls_token_num + 1].sum(-1) - 1).max() <= TOL


def test_guidance_does_not_change_conditional_weights():
    m, ref = make(CONFIGS[1])
    c = m.config
    toks = np.random.default_rng(5).integers(0, c.vocab_size, (2, c.H, c.W))
    plain = m.attention([1, 2], toks)
    guided = m.attention([1, 2], toks, cfg_scale=3.0)
    assert np.abs(plain - guided).max() <= 1e-6
    want = reference_attention(ref, [1, 2], toks, cfg_scale=3.0)
    assert np.abs(guided - want).max() <= TOL


def test_t2i_masked_prefix_slots_are_invisible():
    m = zipar.random_model(dim=32, n_layer=2, n_head=4, n_kv_head=2, vocab_size=17, grid=(2, 3),
                           num_classes=1, cls_token_num=4, caption_dim=12, seed=2)
    ref = ReferenceModel(m.config, m.weights)
    c = m.config
    rng = np.random.default_rng(6)
    caps = rng.standard_normal((2, 4, 12)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], np.uint8)
    toks = rng.integers(0, c.vocab_size, (2, c.H, c.W))
    got = m.attention(None, toks, captions=caps, caption_mask=mask)
    cond, unc, mk = m.prefix(captions=caps, caption_mask=mask)
    want = reference_attention(ref, (cond, unc, mk), toks)
    assert np.abs(got - want).max() <= TOL
    assert np.abs(got.sum(-1) - 1).max() <= TOL
    for b in range(2):
        masked = np.nonzero(mask[b] == 0)[0]
        assert (got[b][..., masked] == 0).all() and (want[b][..., masked] == 0).all()


@pytest.mark.parametrize("kwargs", [
    dict(layers=[2]), dict(layers=[-1]), dict(heads=[4]), dict(heads=[-1]),
    dict(cells=[(4, 0)]), dict(cells=[(0, 4)]), dict(cells=[(-1, 0)]), dict(cells=[(0, -1)]),
])
def test_bad_arguments_raise(kwargs):
    m, ref = make(CONFIGS[1])          # 2 layers, 4 heads, 4x4 grid
    c = m.config
    toks = np.zeros((1, c.H, c.W), np.int64)
    with pytest.raises(ValueError):
        m.attention([0], toks, **kwargs)
    args = dict(cells=None, layers=None, heads=None)
    args.update(kwargs)
    with pytest.raises(ValueError):
        reference_attention(ref, [0], toks, args["cells"], args["layers"], args["heads"])


def test_bad_tokens_and_labels_raise():
    m, ref = make(CONFIGS[0])
    c = m.config
    with pytest.raises(ValueError):
        m.attention([0], np.zeros((1, c.H, c.W + 1), np.int64))
    with pytest.raises(ValueError):
        reference_attention(ref, [0], np.zeros((1, c.H, c.W + 1), np.int64))
    with pytest.raises(ValueError):
        reference_attention(ref, [0], np.full((1, c.H, c.W), c.vocab_size))
    with pytest.raises(ValueError):
        m.attention([0, 1], np.zeros((1, c.H, c.W), np.int64))     # 2 labels, 1 grid
    with pytest.raises(ValueError):
        reference_attention(ref, [0, 1], np.zeros((1, c.H, c.W), np.int64))


def test_inputs_not_mutated():
    m, ref = make(CONFIGS[2])
    c = m.config
    toks = np.random.default_rng(7).integers(0, c.vocab_size, (1, c.H, c.W))
    cells = np.array([[1, 1], [2, 0]])
    keep = toks.copy(), cells.copy()
    m.attention([3], toks, cells=cells)
    reference_attention(ref, [3], toks, cells)
    assert (toks == keep[0]).all() and (cells == keep[1]).all()
