"""Object labels of caption-only datasets (COCO categories named by the reference captions) and the region
sources of a run (proposals, grid, union), on the six real Flickr8k photos of tests/fixtures/flickr8k."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dsanchor.data import ObjectAnnotation, load_dataset
from dsanchor.data.caption_objects import label_objects_from_captions, object_labels_of
from dsanchor.encoders.regions import annotation_boxes, sample_boxes

FIXTURE = Path(__file__).parent / "fixtures" / "flickr8k"


@pytest.fixture(scope="module")
def samples():
    return load_dataset("flickr8k", FIXTURE)


def test_objects_are_the_coco_categories_the_captions_name(samples):
    assert all(not s.objects for s in samples)  # Flickr has no boxes
    labelled = {s.image_path.split("/")[-1]: s for s in label_objects_from_captions(samples)}
    dogs = labelled["2513260012_03d33305cf.jpg"]  # "A black dog is running after a white dog in the snow ."
    assert [o.name for o in dogs.objects] == ["dog"]  # distinct, canonical
    assert all(o.box is None and o.attributes == ("from-captions",) for o in dogs.objects)
    kids = labelled["2090545563_a4e66ec76b.jpg"]  # boys, girls, children on a skateboard
    assert {o.name for o in kids.objects} == {"person", "skateboard"}
    assert all(not s.objects for s in samples)  # the input records are left as they were


def test_which_labels_a_dataset_gets(samples):
    assert object_labels_of(samples) == "captions"
    assert object_labels_of(samples, "annotations") == "annotations"
    boxed = [samples[0].__class__(**{**samples[0].__dict__, "objects": [ObjectAnnotation("dog", (0, 0, 5, 5))]})]
    assert object_labels_of(boxed + list(samples[1:])) == "annotations"  # some annotations: kept
    assert object_labels_of(boxed, "captions") == "captions"
    with pytest.raises(ValueError, match="object_labels must be one of"):
        object_labels_of(samples, "boxes")


def test_labels_without_a_box_never_become_regions():
    objs = [ObjectAnnotation("dog", None), ObjectAnnotation("cat", (2.0, 2.0, 4.0, 4.0))]
    assert annotation_boxes(objs, 10, 10, 5).tolist() == [[2.0, 2.0, 4.0, 4.0]]


def test_region_sources_on_a_photo(samples):
    from dsanchor.stages import region_config

    image = Image.open(FIXTURE / samples[0].image_path).convert("RGB")
    labelled = label_objects_from_captions(samples)[0]
    size = (labelled.width, labelled.height)
    boxes = {name: sample_boxes(labelled.objects, size, image, region_config(name))
             for name in ("proposals", "annotations", "grid", "union")}
    assert boxes["grid"].shape == (14, 4)  # 1 + 4 + 9 cells
    assert boxes["grid"][0].tolist() == [0.0, 0.0, 1.0, 1.0]  # the whole image first
    assert boxes["proposals"].shape[0] == 10  # the proposals are capped at 10 ...
    n_comp = boxes["union"].shape[0] - 14  # ... the union has every grid cell after the components
    assert 0 <= n_comp <= 6 and boxes["union"][n_comp:].tolist() == boxes["grid"].tolist()
    assert boxes["annotations"].tolist() == boxes["proposals"].tolist()  # caption labels have no boxes
    with pytest.raises(Exception, match="region source must be one of"):
        region_config("boxes")
