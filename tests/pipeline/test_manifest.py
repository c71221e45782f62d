"""Manifests, config routing and the shard plan, without Ray."""
import json
import os

import pytest

from pipeline.config import load_extract_config, split_config
from pipeline.manifest import ManifestError, build_manifest
from stages.config import ConfigError


def write_json(path, samples):
    path.write_text(json.dumps(samples))
    return path


def sample(image=None, caption="a caption", question="What is it?"):
    out = {"id": "x", "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                        {"from": "gpt", "value": caption}]}
    if image is not None:
        out["image"] = image
    return out


@pytest.fixture
def root(tmp_path):
    images = tmp_path / "images"
    for key in ("a/1.jpg", "a/2.jpg", "b/3.png"):
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        (images / key).write_bytes(b"not decoded by the manifest")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "outside.jpg", images / "a" / "link.jpg")
    return images


def test_manifest_dedupes_across_files_sorts_keys_and_counts_text_only(root, tmp_path):
    first = write_json(tmp_path / "p.json", [sample("b/3.png"), sample("a/1.jpg"), sample()])
    second = write_json(tmp_path / "s.json", [sample("a/1.jpg"), sample("a/2.jpg"), sample(), sample("b/3.png")])
    manifest = build_manifest([first, second], image_root=root)
    assert manifest.keys == ("a/1.jpg", "a/2.jpg", "b/3.png")
    assert (manifest.n_samples, manifest.n_text_only) == (7, 2)
    assert not manifest.refused and not manifest.missing


def test_escaping_keys_are_refused_by_cause_symlinks_followed_and_missing_files_reported_not_fatal(root, tmp_path):
    entries = ["a/1.jpg", "../outside.jpg", "/etc/passwd", "a/../../outside.jpg", "a/link.jpg",
               "a/nope.jpg", 7]
    manifest = build_manifest([write_json(tmp_path / "m.json", [sample(e) for e in entries])], image_root=root)
    assert manifest.keys == ("a/1.jpg", "a/link.jpg")  # the image root's own symlink is followed
    assert set(manifest.refused) == {"../outside.jpg", "/etc/passwd", "a/../../outside.jpg", "7"}
    assert manifest.refused_by_cause == {"'..' in the path": ("../outside.jpg", "a/../../outside.jpg"),
                                         "absolute path": ("/etc/passwd",), "not a path string": ("7",)}
    assert "escapes the image root" in manifest.refused["/etc/passwd"]
    assert manifest.refusals().startswith("2 '..' in the path (e.g. '../outside.jpg'), 1 absolute path")
    assert manifest.missing == {"a/nope.jpg": f"missing image file {root.resolve() / 'a/nope.jpg'}"}
    kinds = {row["key"]: row["kind"] for row in manifest.problems()}
    assert kinds["a/nope.jpg"] == "missing" and kinds["/etc/passwd"] == "refused"


def test_caption_prompt_comes_from_the_first_sample_of_each_image(root, tmp_path):
    data = write_json(tmp_path / "m.json", [sample("a/1.jpg", caption="first"), sample("a/1.jpg", caption="second"),
                                            sample("a/2.jpg", caption="other")])
    manifest = build_manifest([data], image_root=root, prompt_sources=("caption",))
    assert manifest.prompts == {"caption": {"a/1.jpg": "first", "a/2.jpg": "other"}}
    with pytest.raises(ValueError, match="unknown prompt source"):
        build_manifest([data], image_root=root, prompt_sources=("question",))


def test_malformed_llava_json_fails_with_the_file_name(root, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"image": "a/1.jpg"}')
    with pytest.raises(ManifestError, match="bad.json must hold a JSON list"):
        build_manifest([bad], image_root=root)
    with pytest.raises(ManifestError, match="does not exist"):
        build_manifest([tmp_path / "absent.json"], image_root=root)


def test_config_fields_route_to_cache_spec_or_run_and_unknown_fields_fail():
    config = load_extract_config(["resolution=128", "batch_size=3", "features=[U-L1-R1-B0-Out]"])
    assert config.spec.resolution == 128 and config.spec.features == ("U-L1-R1-B0-Out",)
    assert config.run.batch_size == 3 and config.run.data == ("embedded:sample",)
    with pytest.raises(ConfigError, match="unknown extract config field"):
        split_config({"resolutoin": 128})
    with pytest.raises(ConfigError, match="not a feature name"):
        split_config({"features": ["U-L1-nonsense"]})


SIX_FEATURES = ("U-L1-R1-B0-Cross-Q", "D-L2-R0-B0-Cross-Q", "U-L1-R1-B0-Out", "U-L1-R2-B0-Cross-Q",
                "U-L2-R1-B0-Cross-Q", "U-L2-R2-Res-Out")


@pytest.mark.parametrize("name", ["sample", "sample-clip", "llava558k", "llava665k"])
def test_shipped_configs_parse_with_their_encoder_features_and_shard_size(name):
    config = load_extract_config([f"config=configs/extract/{name}.yaml"])
    assert config.spec.encoder == ("clip" if name == "sample-clip" else "sd")
    if name.startswith("llava"):
        assert config.spec.features == SIX_FEATURES and config.run.shard_size == 256


@pytest.mark.parametrize("key, reason", [
    ("a/\x00.jpg", "contains a NUL byte"),
    ("a/" + "x" * 252 + ".jpg", "has a component of 256 bytes; file names are at most 255 bytes"),
    ("a/\ud800.jpg", "is not valid Unicode text"),
])
def test_a_key_no_file_system_can_hold_is_refused_alone_and_the_manifest_goes_on(key, reason, root, tmp_path):
    data = write_json(tmp_path / "m.json", [sample("a/1.jpg"), sample(key), sample("b/3.png")])
    manifest = build_manifest([data], image_root=root)
    assert manifest.keys == ("a/1.jpg", "b/3.png") and list(manifest.refused) == [key]
    assert reason in manifest.refused[key] and not manifest.missing
