from featx.demo import run_demo
from featx.runtime.metadata import read_metadata


def test_demo_trains_exports_and_gives_useful_embeddings(tmp_path):
    figures = run_demo(tmp_path, epochs=2)
    assert figures["images"] == figures["extracted"] == 1797
    assert figures["val_accuracy"] >= 0.9
    assert figures["knn_accuracy_embeddings"] >= 0.9
    metadata = read_metadata(figures["onnx"])
    assert metadata.arch == "small_cnn"
    assert metadata.bn_folded == 3
