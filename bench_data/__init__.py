"""The data layer: image files and pixels, VOC reading, pretraining items and their uint8 cache,
hole masks, the seeded epoch order, and the generated toy VOC set."""
