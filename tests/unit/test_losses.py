"""Spec → loss, each against a hand computation: InfoNCE (plain, hard negatives, symmetric,
Matryoshka, gathered, cached), triplet, CoSENT, AnglE, cosine, contrastive, online contrastive."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from orchestrator.data.tokenize import Batch, pad
from orchestrator.losses import build_loss
from orchestrator.modeling import PairEncoder
from orchestrator.spec import (
    LOSS_CLASSES,
    CachedInfoNCELoss,
    ContrastiveLossSpec,
    CoSENTLossSpec,
    CosineSimilarityLossSpec,
    InfoNCELoss,
    TripletLossSpec,
)

B, DIM = 4, 16


@pytest.fixture(scope="module")
def model(tiny_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model, device="cpu")


def random_embeddings(seed: int, n: int = 3) -> list[torch.Tensor]:
    """``n`` independent (B, DIM) embedding tensors: queries, positives, negatives..."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(B, DIM, generator=generator) for _ in range(n)]


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def info_nce(queries, docs, scale, labels=None) -> torch.Tensor:
    """Cross entropy of scaled cosine similarities; query i's positive is docs[labels[i]]."""
    labels = torch.arange(len(queries)) if labels is None else labels
    return F.cross_entropy(scale * cos(queries, docs), labels)


def infonce_spec(**fields) -> InfoNCELoss:
    return InfoNCELoss(kind="infonce", temperature=0.05, **fields)


def test_temperature_becomes_the_scale(model):
    assert build_loss(infonce_spec(), model).inner.scale == pytest.approx(20.0)


def test_infonce_matches_hand_computation(model):
    queries, positives = random_embeddings(1, n=2)
    loss = build_loss(infonce_spec(), model)([queries, positives])
    assert loss.item() == pytest.approx(info_nce(queries, positives, 20.0).item(), rel=1e-5)


def test_infonce_with_a_hard_negative_matches_hand_computation(model):
    # Passages arrive as [positives, negatives] and are chunked as in the training step.
    queries, positives, negatives = random_embeddings(2)
    passages = torch.cat([positives, negatives])
    loss = build_loss(infonce_spec(), model)([queries, *passages.chunk(2)])
    expected = info_nce(queries, passages, 20.0)  # each query: 2B - 1 = 7 negatives
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_symmetric_infonce_averages_both_directions(model):
    # sentence-transformers' symmetric variant: directions query_to_doc + doc_to_query with
    # partition_mode="per_direction", i.e. the mean of the two cross entropies. The
    # passage->query direction ranks each positive against all queries (no hard negatives).
    queries, positives, negatives = random_embeddings(3)
    loss = build_loss(infonce_spec(symmetric=True), model)([queries, positives, negatives])
    forward = info_nce(queries, torch.cat([positives, negatives]), 20.0)
    backward = info_nce(positives, queries, 20.0)
    assert loss.item() == pytest.approx(((forward + backward) / 2).item(), rel=1e-5)


def test_symmetric_differs_from_one_direction(model):
    embeddings = random_embeddings(4, n=2)
    one = build_loss(infonce_spec(), model)(embeddings)
    both = build_loss(infonce_spec(symmetric=True), model)(embeddings)
    assert one.item() != pytest.approx(both.item())


@pytest.mark.parametrize(
    ("weights", "expected_weights"),
    [(None, [1.0, 1.0, 1.0]), ([1.0, 0.5, 0.25], [1.0, 0.5, 0.25])],
    ids=["default-weights", "given-weights"],
)
def test_matryoshka_sums_weighted_truncated_losses(model, weights, expected_weights):
    dims = [16, 8, 4]
    spec = infonce_spec(matryoshka_dims=dims, matryoshka_weights=weights)
    queries, positives = random_embeddings(5, n=2)
    loss = build_loss(spec, model)([queries, positives])
    expected = sum(
        w * info_nce(queries[:, :d], positives[:, :d], 20.0)
        for d, w in zip(dims, expected_weights, strict=True)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


TRIPLET_DISTANCES = {
    "cosine": lambda a, b: 1 - F.cosine_similarity(a, b),
    "euclidean": lambda a, b: (a - b).norm(dim=-1),
    "manhattan": lambda a, b: (a - b).abs().sum(dim=-1),
}


@pytest.mark.parametrize("distance", list(TRIPLET_DISTANCES))
def test_triplet_matches_hand_computation(model, distance):
    margin = 0.3 if distance == "cosine" else 2.0
    spec = TripletLossSpec(kind="triplet", margin=margin, distance=distance)
    anchors, positives, negatives = random_embeddings(6)
    loss = build_loss(spec, model)([anchors, positives, negatives])
    d = TRIPLET_DISTANCES[distance]
    expected = F.relu(d(anchors, positives) - d(anchors, negatives) + margin).mean()
    assert expected.item() > 0  # the margin is active for some rows
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


SCORES = torch.tensor([0.9, 0.1, 0.5, 0.3])
LABELS = torch.tensor([1.0, 0.0, 1.0, 0.0])


def cosent(similarities: torch.Tensor, scores: torch.Tensor, scale: float) -> torch.Tensor:
    """log(1 + Σ_{score_i > score_j} exp(scale·(s_j - s_i))), written as the paper does."""
    terms = [
        scale * (similarities[j] - similarities[i])
        for i in range(len(scores))
        for j in range(len(scores))
        if scores[i] > scores[j]
    ]
    return torch.logsumexp(torch.stack([torch.zeros(()), *terms]), dim=0)


def angle_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """AnglE's score |Re(z_a·conj(z_b)) + Im(z_a·conj(z_b))| of unit vectors, where z pairs
    dimension i (real part) with dimension i + D/2 (imaginary part)."""
    za = torch.complex(*F.normalize(a, dim=-1).chunk(2, dim=-1))
    zb = torch.complex(*F.normalize(b, dim=-1).chunk(2, dim=-1))
    product = za * zb.conj()
    return (product.real.sum(-1) + product.imag.sum(-1)).abs()


def test_cosent_matches_hand_computation(model):
    a, b = random_embeddings(8, n=2)
    loss = build_loss(CoSENTLossSpec(kind="cosent", temperature=0.05), model)([a, b], SCORES)
    expected = cosent(F.cosine_similarity(a, b), SCORES, 20.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_cosent_sees_only_the_order_of_scores(model):
    a, b = random_embeddings(9, n=2)
    loss_fn = build_loss(CoSENTLossSpec(kind="cosent"), model)
    assert loss_fn([a, b], SCORES).item() == pytest.approx(loss_fn([a, b], SCORES * 5).item())


def test_angle_is_cosent_with_the_angle_similarity(model):
    a, b = random_embeddings(10, n=2)
    loss = build_loss(CoSENTLossSpec(kind="angle", temperature=0.1), model)([a, b], SCORES)
    expected = cosent(angle_similarity(a, b), SCORES, 10.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    cosine = build_loss(CoSENTLossSpec(kind="cosent", temperature=0.1), model)([a, b], SCORES)
    assert loss.item() != pytest.approx(cosine.item(), rel=1e-3)


def test_cosine_similarity_loss_is_mse_to_the_score(model):
    a, b = random_embeddings(11, n=2)
    loss = build_loss(CosineSimilarityLossSpec(kind="cosine"), model)([a, b], SCORES)
    expected = ((F.cosine_similarity(a, b) - SCORES) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_contrastive_matches_hand_computation(model):
    a, b = random_embeddings(12, n=2)
    spec = ContrastiveLossSpec(kind="contrastive", margin=1.2)
    loss = build_loss(spec, model)([a, b], LABELS)
    d = 1 - F.cosine_similarity(a, b)
    expected = 0.5 * (LABELS * d**2 + (1 - LABELS) * F.relu(1.2 - d) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_online_contrastive_counts_only_hard_pairs(model):
    # Distances: positives (label 1) 0.2 and 0.9; negatives (label 0) 0.4 and 1.5.
    # Hard positives: farther than the closest negative (0.4) → 0.9 only.
    # Hard negatives: closer than the farthest positive (0.9) → 0.4 only.
    a = torch.tensor([[1.0, 0.0]] * 4)
    angles = torch.acos(1 - torch.tensor([0.2, 0.4, 0.9, 1.5]))
    b = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    spec = ContrastiveLossSpec(kind="online_contrastive", margin=0.5)
    loss = build_loss(spec, model)([a, b], labels)
    expected = 0.9**2 + (0.5 - 0.4) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_every_loss_kind_builds_a_library_loss(model):
    from sentence_transformers.sentence_transformer import losses as st_losses

    for kind, cls in LOSS_CLASSES.items():
        built = build_loss(cls(kind=kind), model)
        inner = getattr(built, "inner", None) or built.cached
        assert type(inner).__module__.startswith(st_losses.__name__), kind


def test_loss_has_gradients(model):
    queries, positives = (e.requires_grad_() for e in random_embeddings(7, n=2))
    build_loss(infonce_spec(), model)([queries, positives]).backward()
    assert queries.grad.abs().sum() > 0 and positives.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("spec", "per_worker", "world", "hard", "expected"),
    [
        (infonce_spec(), 32, 1, 0, 31),
        (infonce_spec(), 4, 2, 0, 7),
        (infonce_spec(), 4, 2, 1, 15),
        (infonce_spec(gather_across_workers=False), 4, 2, 0, 3),
        (infonce_spec(gather_across_workers=False), 4, 2, 2, 11),
        (TripletLossSpec(kind="triplet"), 4, 2, 1, 1),
        (CachedInfoNCELoss(kind="cached_mnrl"), 4, 2, 1, 15),
        (CoSENTLossSpec(kind="cosent"), 32, 1, 0, 0),
        (ContrastiveLossSpec(kind="online_contrastive"), 32, 2, 0, 0),
    ],
)
def test_negatives_per_query(spec, per_worker, world, hard, expected):
    assert spec.negatives_per_query(per_worker, world, hard) == expected


# --------------------------------------------------------------------------- two processes

LOCAL_B, WORLD = 3, 2


def global_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and positives of the whole (2-rank) step; rank r owns rows r*b..(r+1)*b."""
    generator = torch.Generator().manual_seed(42)
    shape = (LOCAL_B * WORLD, DIM)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def gathered_worker(rank: int, port: int, model, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=30),  # fail, rather than hang, if the other rank dies
    )
    try:
        queries, positives = global_embeddings()
        mine = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        local_q = queries[mine].clone().requires_grad_()
        local_p = positives[mine].clone().requires_grad_()
        loss = build_loss(infonce_spec(gather_across_workers=True), model, world_size=WORLD)(
            [local_q, local_p]
        )
        loss.backward()
        result = {"loss": loss.detach(), "q_grad": local_q.grad, "p_grad": local_p.grad}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_infonce_across_two_processes(model, tmp_path):
    import torch.multiprocessing as mp

    # fork: the workers inherit the imported libraries and the loaded model (spawn would
    # re-import torch and sentence-transformers in each process: ~10 s more on 2 cores).
    mp.start_processes(
        gathered_worker,
        args=(free_port(), model, str(tmp_path)),
        nprocs=WORLD,
        join=True,
        start_method="fork",
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    queries, positives = (e.requires_grad_() for e in global_embeddings())
    total = torch.zeros(())
    for rank, result in enumerate(ranks):
        mine = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        # Each local query against all 2b gathered positives: 2b - 1 = 5 negatives.
        labels = torch.arange(LOCAL_B) + rank * LOCAL_B
        expected = info_nce(queries[mine], positives, 20.0, labels)
        assert result["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
        local_only = info_nce(queries[mine].detach(), positives[mine].detach(), 20.0)
        assert result["loss"].item() != pytest.approx(local_only.item(), rel=1e-3)
        total = total + expected
    assert infonce_spec().negatives_per_query(LOCAL_B, WORLD, 0) == 5

    # Gradients reach the local embeddings: each rank gets d(sum of all ranks' losses)/d(own rows).
    total.backward()
    for rank, result in enumerate(ranks):
        mine = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        assert result["q_grad"].abs().sum() > 0 and result["p_grad"].abs().sum() > 0
        torch.testing.assert_close(result["q_grad"], queries.grad[mine])
        torch.testing.assert_close(result["p_grad"], positives.grad[mine])


# --------------------------------------------------------------------------- cached (GradCache)

TEXTS = ["the red car", "a green house", "what color is the car", "the blue sky", "a dog"]


def tokenized_batch(model, n_docs: int = 2) -> Batch:
    """Queries and n_docs passage groups of the tiny corpus, padded as the training step does."""
    ids = [torch.tensor(model.tokenizer(t)["input_ids"]) for t in TEXTS]
    queries = ids[:4]
    passages = [ids[(i + g + 1) % len(ids)] for g in range(n_docs) for i in range(4)]
    return Batch(pad(queries, 0), pad(passages, 0), n_docs, None)


def step_gradients(model, spec) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = build_loss(spec, model).step(PairEncoder(model), tokenized_batch(model))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_length_grouped_embedding_gives_the_embeddings_and_gradients_of_one_padded_batch(
    tiny_model,
):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model, device="cpu").eval()  # no dropout: exact equality
    batch = tokenized_batch(model, n_docs=2)
    loss_fn = build_loss(infonce_spec(), model)
    results = []
    for group_rows in (None, 3):
        model.zero_grad()
        encoder = PairEncoder(model, group_rows=group_rows)
        embeddings = encoder([batch.passages])[0]
        loss = loss_fn.step(encoder, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((embeddings.detach(), loss.item(), grads))
    (one, one_loss, one_grads), (grouped, grouped_loss, grouped_grads) = results
    lengths = batch.passages["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # the groups are cut to different lengths
    torch.testing.assert_close(grouped, one, rtol=1e-5, atol=1e-6)
    assert grouped_loss == pytest.approx(one_loss, rel=1e-5)
    for a, b in zip(grouped_grads, one_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dims", [None, [32, 8]], ids=["plain", "matryoshka"])
def test_cached_infonce_gives_the_gradients_of_one_big_batch(tiny_model, dims):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model, device="cpu").eval()  # no dropout: exact equality
    plain = infonce_spec(matryoshka_dims=dims)
    cached = CachedInfoNCELoss(kind="cached_mnrl", mini_batch_size=3, matryoshka_dims=dims)
    plain_loss, plain_grads = step_gradients(model, plain)
    cached_loss, cached_grads = step_gradients(model, cached)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    assert len(cached_grads) == len(plain_grads) > 0
    for mine, reference in zip(cached_grads, plain_grads, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- false negatives


def test_a_duplicate_positive_is_not_a_negative_of_its_twin(tiny_model):
    from sentence_transformers import SentenceTransformer

    from orchestrator.data.tokenize import text_keys

    model = SentenceTransformer(tiny_model, device="cpu").eval()
    ids = [torch.tensor(model.tokenizer(t)["input_ids"]) for t in TEXTS]
    queries, positives = ids[:4], [ids[4], ids[4], ids[1], ids[0]]  # rows 0 and 1 share one
    keys = torch.from_numpy(text_keys([p.numpy() for p in positives]))
    batch = Batch(pad(queries, 0), pad(positives, 0), 1, None, keys)
    loss_fn = build_loss(infonce_spec(), model)
    loss = loss_fn.step(PairEncoder(model), batch)
    assert loss_fn.masked == 2  # row 0's twin and row 1's twin

    q = model.encode([TEXTS[i] for i in range(4)], convert_to_tensor=True)
    p = model.encode([TEXTS[4], TEXTS[4], TEXTS[1], TEXTS[0]], convert_to_tensor=True)
    scores = 20.0 * cos(q, p)
    scores[0, 1] = scores[1, 0] = float("-inf")
    expected = F.cross_entropy(scores, torch.arange(4))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)

    unmasked = build_loss(infonce_spec(mask_false_negatives=False), model)
    assert unmasked.step(PairEncoder(model), batch).item() > loss.item()
    assert unmasked.masked is None  # nothing counted


# --------------------------------------------------------------------------- guided (GISTEmbed)


def perturbed_copy(model, seed: int = 0, noise: float = 0.3):
    """A guide that judges differently from the trained model: its weights moved at random."""
    import copy

    guide = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in guide.parameters():
            parameter += noise * parameter.std() * torch.randn(parameter.shape, generator=generator)
    return guide.requires_grad_(False)


def test_the_guide_leaves_out_what_it_finds_as_close_as_the_positive(tiny_model):
    """Hand computation: the guide's similarities pick the masked candidates, the model's score."""
    from sentence_transformers import SentenceTransformer

    from orchestrator.spec import GuideSpec

    model = SentenceTransformer(tiny_model, device="cpu").eval()
    guide = perturbed_copy(model)
    batch = tokenized_batch(model, n_docs=1)
    margin = 0.05
    spec = infonce_spec(guide=GuideSpec(model="base", margin=margin))
    loss = build_loss(spec, model, guide=guide).step(PairEncoder(model), batch)

    queries, passages = [TEXTS[i] for i in range(4)], [TEXTS[(i + 1) % 5] for i in range(4)]
    guided = cos(*(guide.encode(t, convert_to_tensor=True) for t in (queries, passages)))
    masked = guided > guided.diagonal()[:, None] - margin
    masked.fill_diagonal_(False)
    assert 0 < masked.sum() < masked.numel() - 4  # the test can tell a mask from none
    scores = 20.0 * cos(*(model.encode(t, convert_to_tensor=True) for t in (queries, passages)))
    expected = F.cross_entropy(scores.masked_fill(masked, float("-inf")), torch.arange(4))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    unguided = build_loss(infonce_spec(mask_false_negatives=False), model)
    assert unguided.step(PairEncoder(model), batch).item() != pytest.approx(loss.item())


@pytest.mark.parametrize("dims", [None, [32, 8]], ids=["plain", "matryoshka"])
def test_the_cached_guided_loss_gives_the_gradients_of_the_guided_one(tiny_model, dims):
    from sentence_transformers import SentenceTransformer

    from orchestrator.spec import GuideSpec

    model = SentenceTransformer(tiny_model, device="cpu").eval()
    guide = perturbed_copy(model)
    batch = tokenized_batch(model, n_docs=2)  # a hard-negative column too
    results = []
    for spec in (
        infonce_spec(guide=GuideSpec(model="base"), matryoshka_dims=dims),
        CachedInfoNCELoss(
            kind="cached_infonce",
            mini_batch_size=3,
            guide=GuideSpec(model="base"),
            matryoshka_dims=dims,
        ),
    ):
        model.zero_grad()
        loss = build_loss(spec, model, guide=guide).step(PairEncoder(model), batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((loss.item(), grads))
    (plain_loss, plain_grads), (cached_loss, cached_grads) = results
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    for mine, reference in zip(cached_grads, plain_grads, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6)


def test_a_guided_loss_without_its_guide_model_is_refused(model):
    from orchestrator.spec import GuideSpec

    with pytest.raises(ValueError, match="guide"):
        build_loss(infonce_spec(guide=GuideSpec(model="base")), model)
