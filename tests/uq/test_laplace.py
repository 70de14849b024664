"""Laplace-LoRA: K-FAC factors, marginal-likelihood prior precision, and the GLM predictive variance against a
brute-force Jacobian computation on a tiny model."""

import pytest
import torch

from polar_vbll.adapters import adapter_layers, inject_adapters, make_config
from polar_vbll.data import collate, encode_items, get_task, label_token_ids
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_backbone
from polar_vbll.uq import LaplaceHead


def fitted(method="lora", subset="adapter", n_total=100):
    torch.manual_seed(0)
    backbone = tiny_backbone()
    inject_adapters(backbone.model, make_config(method, r=2, target_modules=["v_proj"]))
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if p.requires_grad and ("lora_B" in name or "polar_theta" in name):
                p.normal_(std=0.3)
    task = get_task("sst2")
    ids = label_token_ids(backbone.tokenizer, task.label_words(), task.name)
    head = LaplaceHead(backbone.lm_head.weight.detach()[ids].float(), subset=subset)
    head.attach(backbone)
    backbone.eval()
    train = collate(encode_items(backbone.tokenizer, task, task.load("train")[:10], 64), 0, 2)
    info = head.post_hoc(backbone, [train], n_total)
    test = collate(encode_items(backbone.tokenizer, task, task.load("validation")[:3], 64), 0, 2)
    return backbone, head, info, test


def posterior_parameters(backbone, head, subset):
    params = {"head": head.linear.weight}
    if subset == "adapter":
        for name, layer in adapter_layers(backbone.model).items():
            key = name.replace(".", "__")
            if hasattr(layer, "polar_theta"):
                params[f"{key}__theta"] = layer.polar_theta
            else:
                params[f"{key}__A"], params[f"{key}__B"] = layer.lora_A, layer.lora_B
    return params


def brute_force_covariance(backbone, head, batch, subset):
    """J Σ Jᵀ with J from autograd per example and class, Σ the explicit inverse of (G ⊗ A + δ I) per map."""
    params = posterior_parameters(backbone, head, subset)
    delta = float(head.prior_precision)
    blocks = {}
    for key in params:
        qa, la = getattr(head, f"{key}__eig_a_vec").double(), getattr(head, f"{key}__eig_a").double()
        qg, lg = getattr(head, f"{key}__eig_g_vec").double(), getattr(head, f"{key}__eig_g").double()
        a_factor, g_factor = qa @ torch.diag(la) @ qa.T, qg @ torch.diag(lg) @ qg.T
        precision = torch.kron(g_factor, a_factor) + delta * torch.eye(g_factor.shape[0] * a_factor.shape[0])
        blocks[key] = torch.linalg.inv(precision)
    with torch.enable_grad():
        logits = head.linear(backbone.features(batch["input_ids"], batch["attention_mask"]).float())
        n, c = logits.shape
        cov = torch.zeros(n, c, c, dtype=torch.float64)
        for i in range(n):
            rows = []
            for k in range(c):
                grads = torch.autograd.grad(logits[i, k], list(params.values()), retain_graph=True)
                rows.append({key: g.double().flatten() for key, g in zip(params, grads, strict=True)})
            for k in range(c):
                for m in range(c):
                    cov[i, k, m] = sum(rows[k][key] @ blocks[key] @ rows[m][key] for key in params)
    return cov


@pytest.mark.parametrize(("method", "subset"), [("lora", "adapter"), ("polar", "adapter"), ("lora", "last_layer")])
def test_glm_predictive_covariance_matches_brute_force_jacobians(method, subset):
    backbone, head, info, test = fitted(method, subset)
    _, cov = head.logit_covariance(backbone, test)
    torch.testing.assert_close(cov, brute_force_covariance(backbone, head, test, subset), rtol=1e-5, atol=1e-9)
    assert info["prior_precision"] > 0 and info["examples"] == 10
    probs, samples = head.predict_batch(backbone, test, 50, torch.Generator().manual_seed(0))
    assert samples.shape == (3, 50, 2) and torch.allclose(probs.sum(-1), torch.ones(3))


def test_kfac_factors_of_the_head_are_the_exact_ggn_terms():
    backbone, head, _, _ = fitted("lora", "last_layer", n_total=10)
    task = get_task("sst2")
    train = collate(encode_items(backbone.tokenizer, task, task.load("train")[:10], 64), 0, 2)
    with torch.no_grad():
        phi = backbone.features(train["input_ids"], train["attention_mask"]).double()
        p = torch.softmax(head.linear(phi.float()).double(), -1)
    a_factor = phi.T @ phi / 10
    g_factor = sum(torch.diag(p[i]) - torch.outer(p[i], p[i]) for i in range(10))  # Σ_n softmax Hessians
    qa, la = head.head__eig_a_vec.double(), head.head__eig_a.double()
    qg, lg = head.head__eig_g_vec.double(), head.head__eig_g.double()
    torch.testing.assert_close(qa @ torch.diag(la) @ qa.T, a_factor, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(qg @ torch.diag(lg) @ qg.T, g_factor, rtol=1e-4, atol=1e-6)


def test_prior_precision_maximizes_the_marginal_likelihood_and_errors():
    backbone, head, info, _ = fitted("lora", "adapter")
    params = posterior_parameters(backbone, head, "adapter")
    eig = torch.cat(
        [torch.outer(getattr(head, f"{k}__eig_g"), getattr(head, f"{k}__eig_a")).flatten().double() for k in params]
    )
    norm2 = sum(float(p.double().pow(2).sum()) for p in params.values())
    count = sum(p.numel() for p in params.values())

    def log_z(d):
        d = torch.tensor(d, dtype=torch.float64)
        return float(-0.5 * d * norm2 + 0.5 * count * d.log() - 0.5 * (eig + d).log().sum())

    best = info["prior_precision"]
    assert log_z(best) >= max(log_z(best * 1.2), log_z(best / 1.2))
    with pytest.raises(PolarVBLLError, match="PoLAR's linear maps need theta='full'"):
        b = tiny_backbone()
        inject_adapters(b.model, make_config("polar", r=2, theta="diagonal"))
        LaplaceHead(torch.zeros(2, 32)).attach(b)
    with pytest.raises(PolarVBLLError, match="subset must be 'adapter' or 'last_layer'"):
        LaplaceHead(torch.zeros(2, 32), subset="all")


def test_input_factor_counts_real_tokens_only():
    torch.manual_seed(0)
    backbone = tiny_backbone()
    inject_adapters(backbone.model, make_config("lora", r=2, target_modules=["v_proj"]))
    task = get_task("sst2")
    ids = label_token_ids(backbone.tokenizer, task.label_words(), task.name)
    head = LaplaceHead(backbone.lm_head.weight.detach()[ids].float())
    head.attach(backbone)
    backbone.eval()
    batch = collate(encode_items(backbone.tokenizer, task, task.load("train")[:6], 64), 0, 2)
    assert (batch["attention_mask"] == 0).any()  # the batch is padded
    inputs = []
    layer = adapter_layers(backbone.model)["model.layers.1.self_attn.v_proj"]
    handle = layer.register_forward_hook(lambda m, a, o: inputs.append(a[0].detach()))
    head.post_hoc(backbone, [batch], 6)
    handle.remove()
    mask = batch["attention_mask"].bool()
    x = inputs[0][mask].double()
    qa, la = head.model__layers__1__self_attn__v_proj__A__eig_a_vec, head.model__layers__1__self_attn__v_proj__A__eig_a
    torch.testing.assert_close((qa @ torch.diag(la) @ qa.T).double(), x.T @ x / len(x), rtol=1e-4, atol=1e-6)


def test_last_layer_glm_covariance_and_prior_precision_match_laplace_torch():
    from laplace import Laplace
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(0)
    n, d, c = 40, 6, 3
    phi, weight = torch.randn(n, d, generator=gen), torch.randn(c, d, generator=gen)
    labels = torch.randint(0, c, (n,), generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(d, c, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    theirs = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron")
    theirs.fit(DataLoader(TensorDataset(phi, labels), batch_size=8))

    class Features:  # a stand-in backbone whose features are phi[ids]
        def eval(self):
            return self

        def features(self, ids, mask):
            return phi[ids[:, 0]]

    def batch(rows):
        return {"input_ids": rows[:, None], "attention_mask": torch.ones(len(rows), 1), "choice_mask": None}

    ours = LaplaceHead(weight, subset="last_layer")
    info = ours.post_hoc(Features(), [batch(torch.arange(i, i + 8)) for i in range(0, n, 8)], n)
    theirs.prior_precision = 2.0
    ours.prior_precision.fill_(2.0)
    _, expected = theirs._glm_predictive_distribution(phi[:5])
    _, cov = ours.logit_covariance(Features(), batch(torch.arange(5)))
    torch.testing.assert_close(cov.float(), expected, rtol=1e-5, atol=1e-6)
    theirs.optimize_prior_precision(method="marglik", n_steps=300)
    # our log grid has 20 points per decade: the optimum agrees within one grid step
    assert info["prior_precision"] == pytest.approx(float(theirs.prior_precision), rel=0.13)


def test_chunked_graphs_give_the_same_posterior_and_predictive(monkeypatch):
    """Fit and predict in sub-batches of 3 (bounded memory) equal one whole-batch pass."""
    results = {}
    for size in (3, 100):
        monkeypatch.setattr(LaplaceHead, "chunk_size", size)
        backbone, head, info, test = fitted()
        probs, samples = head.predict_batch(backbone, test, 20, torch.Generator().manual_seed(0))
        results[size] = (info, head.state_dict(), probs, samples)
    (info3, state3, probs3, samples3), (info100, state100, probs100, samples100) = results[3], results[100]
    assert info3 == info100
    for key, value in state100.items():  # eigenvectors are defined up to sign: compare the factors they rebuild
        if key.endswith("_vec"):
            eig = key.removesuffix("_vec")
            rebuilt3 = state3[key] @ torch.diag(state3[eig]) @ state3[key].T
            rebuilt100 = value @ torch.diag(state100[eig]) @ value.T
            scale = float(rebuilt100.abs().max())
            torch.testing.assert_close(rebuilt3, rebuilt100, rtol=1e-4, atol=1e-5 * scale, msg=key)
        else:
            scale = float(value.abs().max()) if value.numel() else 1.0
            torch.testing.assert_close(state3[key], value, rtol=1e-4, atol=1e-5 * scale, msg=key)
    torch.testing.assert_close(probs3, probs100, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(samples3, samples100, rtol=1e-4, atol=1e-5)
