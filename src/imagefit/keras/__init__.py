"""`imagefit.keras`: Keras' `ImageDataGenerator` API (`keras.preprocessing.image`), backed by
imagefit's image reading. Change one import and a Keras tutorial runs as before:

    from imagefit.keras import ImageDataGenerator   # was: from keras.preprocessing.image ...

    train = ImageDataGenerator(rescale=1 / 255, rotation_range=40, horizontal_flip=True)
    batches = train.flow_from_directory("data/train", target_size=(150, 150), batch_size=20,
                                        class_mode="binary")
    model.fit(batches, epochs=50)

Behaviour is Keras 3's, documented argument by argument in Keras; where imagefit differs (it is
faster, it skips and lists bad files, and it adds a few keyword-only options), README's
"Coming from Keras" lists each difference. Neither Keras nor TensorFlow is imported; when the
program imports Keras, the iterators are `keras.utils.PyDataset`s.
"""

from imagefit.keras.affine import (apply_affine_transform, apply_brightness_shift,
                                   apply_channel_shift, flip_axis, random_brightness,
                                   random_channel_shift, random_rotation, random_shear,
                                   random_shift, random_zoom, transform_matrix_offset_center)
from imagefit.keras.generator import ImageDataGenerator
from imagefit.keras.iterators import (BatchFromFilesMixin, DataFrameIterator, DirectoryIterator,
                                      Iterator, NumpyArrayIterator, class_weight)
from imagefit.keras.utils import (array_to_img, img_to_array, list_pictures, load_img, save_img,
                                  smart_resize, validate_filename)

__all__ = ["ImageDataGenerator", "Iterator", "NumpyArrayIterator", "DirectoryIterator",
           "DataFrameIterator", "BatchFromFilesMixin", "load_img", "img_to_array",
           "array_to_img", "save_img", "smart_resize", "list_pictures", "validate_filename",
           "apply_affine_transform", "transform_matrix_offset_center", "flip_axis",
           "random_rotation", "random_shift", "random_shear", "random_zoom",
           "apply_channel_shift", "random_channel_shift", "apply_brightness_shift",
           "random_brightness", "class_weight"]
