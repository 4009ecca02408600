import pytest

from companion import catalog, params


def test_layer_masking_profiles_differ_and_validate():
    ci = params.profile_values("layer_masking", "ci")
    full = params.profile_values("layer_masking", "full")
    assert ci["profile"] == "ci" and full["profile"] == "full"
    assert params.validate("layer_masking", ci) == ci
    assert full["train_steps"] > ci["train_steps"]


@pytest.mark.parametrize("name,value,message", [
    ("mask_fraction", 1.5, "mask_fraction=1.5 is out of range"),
    ("train_steps", 0, "train_steps=0 is out of range"),
    ("train_steps", "many", "not a valid int"),
    ("profile", "huge", "choose one of ci, full"),
    ("dataset", "cifar", "choose one of"),
    ("trian_steps", 10, "unknown parameter 'trian_steps'"),
])
def test_bad_values_give_one_line_errors(name, value, message):
    with pytest.raises(params.ParamError, match=message) as err:
        params.validate("layer_masking", {name: value})
    assert "\n" not in str(err.value)


def test_strings_from_the_command_line_are_converted():
    out = params.validate("layer_masking", {"train_steps": "20", "mask_sizes": "2,4", "seed": "3"})
    assert out == {"train_steps": 20, "mask_sizes": [2, 4], "seed": 3}


def test_cuda_without_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(params.ParamError, match="no CUDA GPU"):
        params.validate("layer_masking", {"device": "cuda"})


def test_resolve_scales_untouched_values_to_full(monkeypatch):
    monkeypatch.setattr(params, "check_data", lambda values: None)
    ci = params.profile_values("layer_masking", "ci")
    full = params.profile_values("layer_masking", "full")
    ns = dict(ci, profile="full", train_steps=7)
    p = params.resolve("layer_masking", ns, show=False)
    assert p.train_steps == 7  # set by the user: kept
    assert p.lime_samples == full["lime_samples"]  # left at ci: scaled
    monkeypatch.setenv(params.RESOLVED_ENV, "1")  # under the runner every value is already final
    assert params.resolve("layer_masking", ns, show=False).lime_samples == ci["lime_samples"]


def test_missing_dataset_names_the_preparing_command(monkeypatch, tmp_path):
    from companion import data

    monkeypatch.setattr(data.files, "FASHION_MNIST_DIRS", ())
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    with pytest.raises(params.ParamError, match="data_scripts/fashion_mnist.py"):
        params.check_data({"dataset": "fashion_mnist"})
    params.check_data({"dataset": "shapes"})


@pytest.mark.parametrize("slug", [p.slug for p in catalog.implemented()])
def test_smoke_values_are_valid_and_smaller(slug):
    """The determinism check's ``smoke`` values pass the parameter's own checks."""
    specs = params.specs(slug)
    for name, value in params.smoke_overrides(slug).items():
        assert specs[name].check(value) == value, name
