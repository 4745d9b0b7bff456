"""featx train: the checkpoint it writes, exact resume, strategies, --init, methods, bad input.

Data: scikit-learn's digits written as JPEGs (real scans), small subsets where only behaviour is
checked. The accuracy targets live in test_train_accuracy.py.
"""

import shutil

import pytest
import torch

import featx
from featx.cli import main
from featx.data.digits import label_of, write_digits
from featx.models import get_extractor
from featx.models.checkpoint import load_model, save_checkpoint
from featx.models.seeds import SEED_PREPROCESS
from featx.runtime.errors import FeatxError
from featx.training import gan
from featx.training.autoencoder import AutoencoderObjective, patch_mask
from featx.training.job import TrainingInterrupted
from featx.training.simclr import nt_xent
from featx.training.supervised import apply_strategy, backbone_blocks, build_classifier, load_init

FAST = {"epochs": 2, "batch_size": 16, "augment": "light", "progress": False}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits") / "all")


@pytest.fixture
def small_folder(tmp_path, digits):
    """Three classes of 20 real digits each, ImageFolder layout."""

    def make(classes=(0, 1, 2), per_class=20, name="data"):
        root = tmp_path / name
        for label in classes:
            chosen = [p for p in digits if label_of(p) == label][:per_class]
            (root / str(label)).mkdir(parents=True)
            for path in chosen:
                shutil.copy(path, root / str(label) / path.name)
        return root

    return make


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_weights(expected_checkpoint, got_checkpoint):
    """Both checkpoints hold bit-identical weights, tensor by tensor."""
    expected = torch.load(expected_checkpoint, weights_only=True)["state_dict"]
    got = torch.load(got_checkpoint, weights_only=True)["state_dict"]
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_checkpoint_is_featx_format_and_loads_weights_only(tmp_path, small_folder):
    data = small_folder()
    result = featx.train(data, "small_cnn", tmp_path / "m.pt", **FAST)
    payload = torch.load(result.checkpoint, weights_only=True)
    assert payload["arch"] == "small_cnn"
    meta = payload["featx"]
    assert meta["classes"] == ["0", "1", "2"]
    assert meta["num_classes"] == 3
    assert meta["preprocess"]["crop_size"] == 32
    assert meta["preprocess"]["mean"] == [0.5, 0.5, 0.5] or tuple(meta["preprocess"]["mean"]) == (
        0.5,
        0.5,
        0.5,
    )
    assert meta["training"]["method"] == "supervised"
    assert meta["training"]["epochs_run"] == 2
    assert payload["state_dict"]["classifier.weight"].shape == (3, 128)
    assert result.curves.is_file()
    assert result.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "m.pt.state").exists()
    assert len(result.history) == 2
    assert load_model(result.checkpoint).module.classifier.out_features == 3


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, small_folder):
    data = small_folder()
    settings = {**FAST, "epochs": 3, "augment": "standard", "patience": 0}
    whole = featx.train(data, "small_cnn", tmp_path / "whole.pt", **settings)

    def stop_after_first_epoch(epoch, result):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as interrupted:
        featx.train(
            data, "small_cnn", tmp_path / "part.pt", on_epoch=stop_after_first_epoch, **settings
        )
    assert interrupted.value.exit_code == 130
    assert (tmp_path / "part.pt.state").is_file()
    assert (
        torch.load(tmp_path / "part.pt", weights_only=True)["featx"]["training"]["epochs_run"] == 1
    )
    resumed = featx.train(data, "small_cnn", tmp_path / "part.pt", resume=True, **settings)
    assert resumed.resumed_from_epoch == 1
    assert resumed.history == whole.history
    expected = torch.load(whole.checkpoint, weights_only=True)["state_dict"]
    got = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_resume_refuses_other_settings_and_missing_state(tmp_path, small_folder):
    data = small_folder()
    with pytest.raises(FeatxError, match="no training state"):
        featx.train(data, "small_cnn", tmp_path / "m.pt", resume=True, **FAST)

    def stop(epoch, result):
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        featx.train(data, "small_cnn", tmp_path / "m.pt", on_epoch=stop, **FAST)
    with pytest.raises(FeatxError, match="different run: lr"):
        featx.train(data, "small_cnn", tmp_path / "m.pt", resume=True, lr=0.5, **FAST)


def test_early_stopping_keeps_best_epoch(tmp_path, small_folder):
    data = small_folder()
    # A learning rate this high makes val accuracy stall after the warm-up epoch.
    result = featx.train(
        data,
        "small_cnn",
        tmp_path / "m.pt",
        **{**FAST, "epochs": 8},
        patience=1,
        lr=3.0,
        optimizer="sgd",
    )
    accuracies = [row["val_accuracy"] for row in result.history]
    assert result.best_val_accuracy == max(accuracies)
    assert result.best_epoch == accuracies.index(max(accuracies)) + 1
    if result.stopped_early:
        assert len(result.history) < 8
        assert len(result.history) == result.best_epoch + 1


def test_linear_strategy_trains_only_the_head(tmp_path, small_folder):
    data = small_folder()
    torch.manual_seed(0)
    initial = get_extractor("small_cnn").build_model(3)
    init = save_checkpoint(tmp_path / "init.pt", initial, "small_cnn")
    result = featx.train(data, "small_cnn", tmp_path / "m.pt", strategy="linear", init=init, **FAST)
    trained = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    before = initial.state_dict()
    for key, value in trained.items():
        if key.startswith("classifier."):
            assert not torch.equal(value, before[key]), key
        else:  # frozen weights and BatchNorm statistics alike
            assert torch.equal(value, before[key]), key
    assert result.trainable_parameters == 128 * 3 + 3


def test_partial_strategy_trains_the_last_block_and_head(tmp_path, small_folder):
    model, head = build_classifier(get_extractor("small_cnn"), 3)
    plan = apply_strategy(model, head, "partial", blocks=1)
    assert plan.modules == ("embed", "classifier")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen
    assert all(n.startswith("features.") for n in frozen)
    resnet, resnet_head = build_classifier(get_extractor("resnet18"), 5)
    assert backbone_blocks(resnet, resnet_head) == [
        "conv1",
        "bn1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert apply_strategy(resnet, resnet_head, "partial", 2).modules == ("layer3", "layer4", "fc")
    with pytest.raises(FeatxError, match="6 backbone blocks"):
        apply_strategy(resnet, resnet_head, "partial", 7)


def test_init_from_torchvision_state_dict_replaces_only_the_head(tmp_path):
    torch.manual_seed(1)
    source = get_extractor("resnet18").build_model(None)  # 1000 classes, like ImageNet weights
    weights = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), weights)
    model, head = build_classifier(get_extractor("resnet18"), 5)
    fresh_head = model.fc.weight.clone()
    loaded = load_init(model, "resnet18", weights, head)
    assert loaded == len(source.state_dict()) - 2
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(model.fc.weight, fresh_head)


def test_init_from_a_checkpoint_of_other_classes_starts_a_new_head(tmp_path):
    torch.manual_seed(2)
    source = get_extractor("small_cnn").build_model(3)
    checkpoint = save_checkpoint(tmp_path / "abc.pt", source, "small_cnn", classes=["a", "b", "c"])
    same, head = build_classifier(get_extractor("small_cnn"), 3)
    load_init(same, "small_cnn", checkpoint, head, ["a", "b", "c"])
    assert torch.equal(same.get_submodule(head).weight, source.get_submodule(head).weight)
    other, head = build_classifier(get_extractor("small_cnn"), 3)
    fresh_head = other.get_submodule(head).weight.clone()
    load_init(other, "small_cnn", checkpoint, head, ["x", "y", "z"])
    assert torch.equal(other.get_submodule(head).weight, fresh_head)
    backbone = next(name for name, _ in source.named_parameters() if not name.startswith(head))
    assert torch.equal(other.get_parameter(backbone), source.get_parameter(backbone))


def test_init_errors(tmp_path):
    model, head = build_classifier(get_extractor("resnet18"), 5)
    with pytest.raises(FeatxError, match=r"no such file.*never downloads"):
        load_init(model, "resnet18", tmp_path / "absent.pth", head)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FeatxError, match="not a readable weights file"):
        load_init(model, "resnet18", garbage, head)
    other = tmp_path / "other.pth"
    torch.save(get_extractor("resnet50").build_model(None).state_dict(), other)
    with pytest.raises(FeatxError, match="does not fit arch 'resnet18'"):
        load_init(model, "resnet18", other, head)
    featx_checkpoint = save_checkpoint(
        tmp_path / "small.pt", get_extractor("small_cnn").build_model(), "small_cnn"
    )
    with pytest.raises(FeatxError, match="featx checkpoint of arch 'small_cnn'"):
        load_init(model, "resnet18", featx_checkpoint, head)


def test_unreadable_images_are_skipped_and_counted(tmp_path, small_folder):
    data = small_folder()
    (data / "0" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (data / "1" / "empty.png").write_bytes(b"")
    result = featx.train(data, "small_cnn", tmp_path / "m.pt", **{**FAST, "epochs": 1})
    assert {s["path"].split("/")[-1] for s in result.skipped} == {"broken.jpg", "empty.png"}
    assert result.train_images + result.val_images == 60


def test_csv_data_and_csv_with_missing_files(tmp_path, small_folder):
    data = small_folder()
    rows = [
        f"{p.relative_to(data).as_posix()},{p.parent.name}" for p in sorted(data.rglob("*.jpg"))
    ]
    table = data / "labels.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    result = featx.train(table, "small_cnn", tmp_path / "m.pt", **{**FAST, "epochs": 1})
    assert result.classes == ["0", "1", "2"]
    assert result.train_images + result.val_images == 60
    table.write_text("path,label\n" + "\n".join([*rows, "0/missing.jpg,0"]) + "\n")
    with pytest.raises(FeatxError, match="1 file\\(s\\) that do not exist"):
        featx.train(table, "small_cnn", tmp_path / "m2.pt", **FAST)


def _cli_error(capsys, argv, output, pattern):
    assert main(argv) == 2
    assert pattern in capsys.readouterr().err.replace("\n", " ")
    assert not output.exists()
    assert not output.with_name(output.name + ".state").exists()


def test_bad_input_exits_2_and_writes_nothing(tmp_path, small_folder, capsys):
    out = tmp_path / "out" / "m.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["train", "--arch", "small_cnn", "-o", str(out), "--epochs", "1", "--quiet"]
    _cli_error(capsys, [*base, "--data", str(empty)], out, "is empty")
    one_class = small_folder(classes=(4,), name="one")
    _cli_error(capsys, [*base, "--data", str(one_class)], out, "one class only")
    data = small_folder()
    broken = small_folder(classes=(5, 6), per_class=2, name="broken")
    for path in broken.rglob("*.jpg"):
        path.write_bytes(b"junk")
    _cli_error(capsys, [*base, "--data", str(broken)], out, "could be decoded")
    _cli_error(
        capsys,
        ["train", "--data", str(data), "--arch", "resnet_18", "-o", str(out)],
        out,
        "unknown architecture 'resnet_18'",
    )
    _cli_error(
        capsys, [*base, "--data", str(data), "--init", str(tmp_path / "nope.pt")], out, "no such"
    )


def test_distill_teacher_mismatch_and_unloadable_teacher(tmp_path, small_folder, capsys):
    data = small_folder()
    teacher = save_checkpoint(
        tmp_path / "teacher.pt",
        get_extractor("small_cnn").build_model(4),
        "small_cnn",
        classes=["0", "1", "2", "3"],
    )
    out = tmp_path / "student.pt"
    base = ["train", "--data", str(data), "--arch", "small_cnn", "-o", str(out), "--quiet"]
    _cli_error(
        capsys,
        [*base, "--method", "distill", "--teacher", str(teacher)],
        out,
        "predicts 4 classes, the data has 3",
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    _cli_error(
        capsys, [*base, "--method", "distill", "--teacher", str(junk)], out, "cannot be loaded"
    )
    _cli_error(capsys, [*base, "--method", "distill"], out, "needs --teacher")


def test_distill_unlabeled_with_feature_matching_across_dims(tmp_path, small_folder):
    data = small_folder()
    teacher = featx.train(data, "small_cnn", tmp_path / "teacher.pt", **FAST)
    loose = tmp_path / "loose"
    loose.mkdir()
    for path in data.rglob("*.jpg"):
        shutil.copy(path, loose / f"{path.parent.name}-{path.name}")
    student = featx.train(
        loose,
        "transformer_encoder",
        tmp_path / "student.pt",
        method="distill",
        teacher=teacher.checkpoint,
        feature_weight=1.0,
        **FAST,
    )
    assert student.classes == ["0", "1", "2"]
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in student.history)
    assert "val_accuracy" in student.history[-1]  # agreement with the teacher
    payload = torch.load(student.checkpoint, weights_only=True)
    assert payload["arch"] == "transformer_encoder"
    # the 128 -> 64 feature projection is a training aid, not part of the student
    assert not any(k.startswith("projection") for k in payload["state_dict"])
    assert payload["state_dict"]["head.weight"].shape == (3, 64)


def test_simsiam_checkpoint_exports_the_encoder_only(tmp_path, small_folder):
    data = small_folder()
    result = featx.train(
        data, "simsiam_cnn", tmp_path / "ss.pt", method="simsiam", **FAST, image_size=16
    )
    assert result.classes == []
    assert "val_accuracy" not in result.history[-1]
    exported = featx.export(result.checkpoint, tmp_path / "ss.onnx")
    assert exported.metadata.layer == "encoder"
    assert exported.metadata.embedding_dim == 128
    assert exported.metadata.preprocess.crop_size == 16


def test_simsiam_on_torchvision_arch_trains_its_backbone(tmp_path, small_folder):
    data = small_folder(per_class=6)
    torch.manual_seed(0)
    result = featx.train(
        data,
        "resnet18",
        tmp_path / "r.pt",
        method="simsiam",
        **{**FAST, "epochs": 1, "batch_size": 8},
        image_size=32,
    )
    trained = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    torch.manual_seed(0)
    initial = get_extractor("resnet18").build_model(None).state_dict()
    assert not torch.equal(trained["layer4.1.conv2.weight"], initial["layer4.1.conv2.weight"])
    assert torch.equal(trained["fc.weight"], initial["fc.weight"])


def _loose_copy(data, target):
    """The images of an ImageFolder tree as one unlabeled folder."""
    target.mkdir()
    for path in data.rglob("*.jpg"):
        shutil.copy(path, target / f"{path.parent.name}-{path.name}")
    return target


def test_nt_xent_matches_its_formula_and_rewards_aligned_views():
    views = torch.eye(4)[:2]  # two images whose two views coincide, orthogonal to each other
    temperature = 0.5
    # each of the 4 views: its positive at cosine 1, the 2 views of the other image at 0
    expected = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 2))
    assert torch.allclose(nt_xent(views, views.clone(), temperature), expected)
    assert nt_xent(views, views.flip(0), temperature) > nt_xent(views, views, temperature) + 1


@pytest.mark.parametrize("method", ["simclr", "autoencoder"])
def test_self_supervised_runs_are_judged_by_knn_when_labelled_else_by_val_loss(
    tmp_path, small_folder, method
):
    data = small_folder()
    arch = {"simclr": "simsiam_cnn", "autoencoder": "conv_autoencoder"}[method]
    settings = {**FAST, "epochs": 3, "patience": 0, "image_size": 16}
    labelled = featx.train(data, arch, tmp_path / "l.pt", method=method, **settings)
    knn = [row["val_knn_accuracy"] for row in labelled.history]
    assert labelled.monitor == "val_knn_accuracy"
    assert labelled.classes == []  # labels only judge the epochs
    assert labelled.best_val_accuracy == max(knn)
    assert labelled.best_epoch == knn.index(max(knn)) + 1
    unlabeled = featx.train(
        _loose_copy(data, tmp_path / "loose"), arch, tmp_path / "u.pt", method=method, **settings
    )
    losses = [row["val_loss"] for row in unlabeled.history]
    assert unlabeled.monitor == "val_loss"
    assert "val_knn_accuracy" not in unlabeled.history[-1]
    assert unlabeled.best_value == min(losses)
    assert unlabeled.best_epoch == losses.index(min(losses)) + 1
    assert unlabeled.best_val_accuracy is None
    assert unlabeled.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = torch.load(unlabeled.checkpoint, weights_only=True)
    assert payload["featx"]["training"]["monitor"] == "val_loss"
    assert payload["featx"]["training"]["best_epoch"] == unlabeled.best_epoch


def test_simclr_checkpoint_is_the_arch_without_projector_and_exports_its_encoder(
    tmp_path, small_folder
):
    data = small_folder()
    result = featx.train(
        data, "small_cnn", tmp_path / "c.pt", method="simclr", **FAST, image_size=32
    )
    payload = torch.load(result.checkpoint, weights_only=True)
    assert payload["arch"] == "small_cnn"
    assert payload["featx"]["training"]["temperature"] == 0.5
    assert (
        payload["state_dict"].keys() == get_extractor("small_cnn").build_model().state_dict().keys()
    )
    exported = featx.export(result.checkpoint, tmp_path / "c.onnx")
    assert exported.metadata.layer == "embed"
    assert exported.metadata.embedding_dim == 128


def test_autoencoder_checkpoint_exports_the_trained_encoder(tmp_path, small_folder):
    data = small_folder()
    torch.manual_seed(0)
    initial = get_extractor("conv_autoencoder").build_model().state_dict()
    result = featx.train(data, "conv_autoencoder", tmp_path / "ae.pt", method="autoencoder", **FAST)
    trained = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    for part in ("encoder.2.weight", "decoder.0.weight"):
        assert not torch.equal(trained[part], initial[part]), part
    exported = featx.export(result.checkpoint, tmp_path / "ae.onnx")
    assert exported.metadata.layer == "encoder"
    assert exported.metadata.embedding_dim == 256


def test_patch_mask_blanks_the_asked_fraction_of_whole_patches():
    torch.manual_seed(0)
    mask = patch_mask(torch.zeros(3, 3, 16, 16), 0.25)
    assert mask.shape == (3, 1, 16, 16)
    cells = mask[:, 0, ::2, ::2]  # 8 x 8 grid of 2 x 2 patches
    assert torch.equal(mask, cells.repeat_interleave(2, 1).repeat_interleave(2, 2).unsqueeze(1))
    assert cells.sum(dim=(1, 2)).tolist() == [16.0, 16.0, 16.0]
    assert not torch.equal(cells[0], cells[1])  # each image draws its own patches


def test_masked_loss_counts_only_the_masked_patches():
    """An identity "autoencoder" copies its input, so it reconstructs the visible patches
    exactly and the blanked ones as 0: the loss is the mean squared pixel of the masked ones."""
    images = torch.randn(2, 3, 8, 8)
    objective = AutoencoderObjective(torch.nn.Identity(), "mse", noise=0.0, mask_ratio=0.5)
    torch.manual_seed(1)
    loss, _ = objective.step(images, torch.zeros(2))
    torch.manual_seed(1)
    mask = patch_mask(images, 0.5)
    expected = (images**2 * mask).sum() / (mask.sum() * 3)
    assert torch.allclose(loss, expected)
    plain = AutoencoderObjective(torch.nn.Identity(), "l1", noise=0.0, mask_ratio=0.0)
    assert plain.step(images, torch.zeros(2))[0] == 0
    noisy = AutoencoderObjective(torch.nn.Identity(), "mse", noise=0.5, mask_ratio=0.0)
    assert 0.15 < noisy.step(images, torch.zeros(2))[0] < 0.35  # E[(0.5 z)^2] = 0.25


@pytest.mark.parametrize(
    ("method", "arch", "extra"),
    [
        ("simclr", "simsiam_cnn", {}),
        ("autoencoder", "conv_autoencoder", {"noise": 0.2, "mask_ratio": 0.5}),
        ("gan", "simsiam_cnn", {}),
    ],
)
def test_new_methods_resume_bit_identically(tmp_path, small_folder, method, arch, extra):
    data = small_folder(per_class=10)
    settings = {**FAST, "epochs": 2, "patience": 0, "image_size": 16, "method": method, **extra}
    whole = featx.train(data, arch, tmp_path / "whole.pt", **settings)

    def stop_after_first_epoch(epoch, result):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        featx.train(data, arch, tmp_path / "part.pt", on_epoch=stop_after_first_epoch, **settings)
    resumed = featx.train(data, arch, tmp_path / "part.pt", resume=True, **settings)
    assert resumed.resumed_from_epoch == 1
    assert resumed.history == whole.history
    _assert_same_weights(whole.checkpoint, resumed.checkpoint)


def test_new_methods_bad_input_exits_2_and_writes_nothing(tmp_path, small_folder, capsys):
    data = small_folder(per_class=5)
    out = tmp_path / "m.pt"
    base = ["train", "--data", str(data), "-o", str(out), "--epochs", "1", "--quiet"]
    ae = [*base, "--method", "autoencoder"]
    _cli_error(capsys, [*ae, "--arch", "small_cnn"], out, "has no encoder or decoder module")
    _cli_error(
        capsys, [*ae, "--arch", "conv_autoencoder", "--mask-ratio", "1"], out, "within [0, 1)"
    )
    _cli_error(capsys, [*ae, "--arch", "conv_autoencoder", "--noise", "-1"], out, ">= 0")
    _cli_error(
        capsys,
        [*ae, "--arch", "conv_autoencoder", "--image-size", "12"],
        out,
        "not a reconstruction",
    )
    simclr = [*base, "--method", "simclr", "--arch", "simsiam_cnn"]
    _cli_error(capsys, [*simclr, "--temperature", "0"], out, "--temperature must be > 0")
    _cli_error(capsys, [*simclr, "--noise", "0.1"], out, "only used with --method autoencoder")
    _cli_error(
        capsys,
        [*base, "--arch", "small_cnn", "--temperature", "0.5"],
        out,
        "--temperature is used by --method distill and simclr, not supervised",
    )


def _tasks_csv(data, name="tasks.csv"):
    """digit and parity columns for an ImageFolder tree of digits, plus an unused column."""
    rows = [
        f"{p.relative_to(data).as_posix()},{p.parent.name},"
        f"{'even' if int(p.parent.name) % 2 == 0 else 'odd'},x"
        for p in sorted(data.rglob("*.jpg"))
    ]
    table = data / name
    table.write_text("path,digit,parity,note\n" + "\n".join(rows) + "\n")
    return table


def test_multitask_trains_one_backbone_and_records_each_tasks_classes(tmp_path, small_folder):
    table = _tasks_csv(small_folder(classes=(0, 1, 2, 3)))
    result = featx.train(
        table,
        "small_cnn",
        tmp_path / "mt.pt",
        method="multitask",
        tasks=["parity", "digit"],
        task_weights=[0.5, 1.0],
        **FAST,
    )
    assert result.tasks == {"parity": ["even", "odd"], "digit": ["0", "1", "2", "3"]}
    assert result.monitor == "val_accuracy"
    assert 0 <= result.best_val_accuracy <= 1
    payload = torch.load(result.checkpoint, weights_only=True)
    assert payload["featx"]["tasks"] == result.tasks
    assert payload["featx"]["training"]["task_weights"] == [0.5, 1.0]
    # the heads are training aids: the checkpoint is small_cnn itself, exported at its embedding
    assert (
        payload["state_dict"].keys() == get_extractor("small_cnn").build_model().state_dict().keys()
    )
    exported = featx.export(result.checkpoint, tmp_path / "mt.onnx")
    assert exported.metadata.layer == "embed"


def test_multitask_loss_is_the_weighted_sum_of_the_task_losses():
    from featx.training.multitask import MultitaskObjective

    torch.manual_seed(0)
    tasks = {"digit": ["0", "1", "2"], "parity": ["even", "odd"]}
    objective = MultitaskObjective(get_extractor("simsiam_cnn"), 16, tasks, [2.0, 0.5], 0.0)
    objective.eval()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([[0, 0], [1, 1], [2, 0], [1, 1]])
    loss, correct = objective.evaluate(images, labels)
    features = objective.backbone(images)
    expected = 2.0 * torch.nn.functional.cross_entropy(objective.heads[0](features), labels[:, 0])
    expected += 0.5 * torch.nn.functional.cross_entropy(objective.heads[1](features), labels[:, 1])
    assert torch.allclose(loss, expected)
    hits = sum(
        int((objective.heads[t](features).argmax(1) == labels[:, t]).sum()) for t in range(2)
    )
    assert correct == hits / 2


def test_multitask_resumes_bit_identically(tmp_path, small_folder):
    table = _tasks_csv(small_folder(per_class=10))
    settings = {**FAST, "patience": 0, "method": "multitask", "tasks": ["digit", "parity"]}
    whole = featx.train(table, "small_cnn", tmp_path / "whole.pt", **settings)

    def stop_after_first_epoch(epoch, result):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        featx.train(
            table, "small_cnn", tmp_path / "part.pt", on_epoch=stop_after_first_epoch, **settings
        )
    resumed = featx.train(table, "small_cnn", tmp_path / "part.pt", resume=True, **settings)
    assert resumed.history == whole.history
    _assert_same_weights(whole.checkpoint, resumed.checkpoint)


def test_multitask_bad_input_exits_2_and_writes_nothing(tmp_path, small_folder, capsys):
    data = small_folder(per_class=5)
    table = _tasks_csv(data)
    out = tmp_path / "m.pt"
    base = ["train", "--arch", "small_cnn", "-o", str(out), "--epochs", "1", "--quiet"]
    multitask = [*base, "--method", "multitask", "--data", str(table)]
    _cli_error(capsys, multitask, out, "needs --tasks COLUMN1,COLUMN2")
    _cli_error(capsys, [*multitask, "--tasks", "digit,colour"], out, "has no column(s) colour")
    _cli_error(capsys, [*multitask, "--tasks", "digit,note"], out, "note of")
    _cli_error(
        capsys,
        [*multitask, "--tasks", "digit,parity", "--task-weights", "1"],
        out,
        "gives 1 weight(s) for 2 task(s)",
    )
    _cli_error(
        capsys,
        [*base, "--method", "multitask", "--data", str(data), "--tasks", "digit"],
        out,
        "is not a .csv file",
    )
    _cli_error(
        capsys,
        [*base, "--data", str(data), "--tasks", "digit"],
        out,
        "only used with --method multitask",
    )


def test_gan_checkpoint_is_the_discriminator_and_exports_its_penultimate_features(
    tmp_path, small_folder
):
    data = small_folder()
    result = featx.train(
        data, "dcgan_discriminator", tmp_path / "d.pt", method="gan", **{**FAST, "epochs": 1}
    )
    row = result.history[-1]
    assert row["train_loss"] == pytest.approx(
        row["train_discriminator_loss"] + row["train_generator_loss"], rel=1e-5
    )
    assert result.monitor == "val_knn_accuracy"
    payload = torch.load(result.checkpoint, weights_only=True)
    assert payload["featx"]["training"]["lr"] == gan.GAN_LR
    assert payload["featx"]["training"]["weight_decay"] == 0.0
    expected = get_extractor("dcgan_discriminator").build_model().state_dict().keys()
    assert payload["state_dict"].keys() == expected  # no generator in the extractor
    exported = featx.export(result.checkpoint, tmp_path / "d.onnx")
    assert exported.metadata.layer == "features"
    assert exported.metadata.embedding_dim == 128
    unlabeled = featx.train(
        _loose_copy(data, tmp_path / "loose"),
        "dcgan_discriminator",
        tmp_path / "u.pt",
        method="gan",
        **{**FAST, "epochs": 1},
    )
    assert unlabeled.monitor is None  # an adversarial loss does not judge features


def test_a_diverged_gan_says_so_and_saves_nothing_of_that_epoch(
    tmp_path, small_folder, capsys, monkeypatch
):
    """Every epoch counts as a collapse when the threshold is above any discriminator loss."""
    healthy = {"epoch": 3, "train_discriminator_loss": 1.2, "train_generator_loss": 0.8}
    collapsed = {**healthy, "train_discriminator_loss": 0.01, "train_generator_loss": 6.0}
    objective = gan.GANObjective(get_extractor("dcgan_discriminator"), SEED_PREPROCESS)
    assert objective.divergence(healthy) is None
    assert "diverged at epoch 3" in objective.divergence(collapsed)
    monkeypatch.setattr(gan, "DIVERGED_DISCRIMINATOR_LOSS", 100.0)
    out = tmp_path / "d.pt"
    argv = ["train", "--data", str(small_folder()), "--arch", "dcgan_discriminator"]
    _cli_error(capsys, [*argv, "-o", str(out), "--method", "gan", "--quiet"], out, "diverged")


def test_gan_generator_needs_a_power_of_two_size(tmp_path, small_folder, capsys):
    out = tmp_path / "g.pt"
    argv = ["train", "--data", str(small_folder(per_class=5)), "--arch", "simsiam_cnn"]
    _cli_error(
        capsys,
        [*argv, "-o", str(out), "--method", "gan", "--image-size", "12", "--quiet"],
        out,
        "4 * 2^k pixels",
    )
