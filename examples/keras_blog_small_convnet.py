#!/usr/bin/env python3
"""The Keras blog's "small data" script ("Building powerful image classification models using
very little data", F. Chollet, 2016): a three-block convnet trained from scratch with
ImageDataGenerator augmentation and flow_from_directory(class_mode="binary"), then
model.fit. The one change from the blog is the import of ImageDataGenerator:

    from imagefit.keras import ImageDataGenerator   # was: from keras.preprocessing.image ...

It runs on the bundled demo data (two of its ten classes, as the blog has cats and dogs) with
Keras 3 on PyTorch, and prints the validation accuracy:

    KERAS_BACKEND=torch python examples/keras_blog_small_convnet.py [--epochs 10]

Needs Keras 3 (`pip install keras`; the dev extra has it).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

from keras import backend as K  # noqa: E402
from keras.layers import Activation, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D  # noqa: E402,E501
from keras.models import Sequential  # noqa: E402

from imagefit.keras import ImageDataGenerator  # noqa: E402  (the one changed line)

DEMO = Path(__file__).resolve().parent / "fashion-mnist-demo"
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--data", type=Path, default=DEMO, help="a folder with train/ and test/")
parser.add_argument("--classes", nargs=2, default=["t-shirt_top", "trouser"])
args = parser.parse_args()

# dimensions of our images.
img_width, img_height = 150, 150

train_data_dir = str(args.data / "train")
validation_data_dir = str(args.data / "test")
epochs = args.epochs
batch_size = 16

if K.image_data_format() == "channels_first":
    input_shape = (3, img_width, img_height)
else:
    input_shape = (img_width, img_height, 3)

model = Sequential()
model.add(Input(shape=input_shape))
model.add(Conv2D(32, (3, 3)))
model.add(Activation("relu"))
model.add(MaxPooling2D(pool_size=(2, 2)))

model.add(Conv2D(32, (3, 3)))
model.add(Activation("relu"))
model.add(MaxPooling2D(pool_size=(2, 2)))

model.add(Conv2D(64, (3, 3)))
model.add(Activation("relu"))
model.add(MaxPooling2D(pool_size=(2, 2)))

model.add(Flatten())
model.add(Dense(64))
model.add(Activation("relu"))
model.add(Dropout(0.5))
model.add(Dense(1))
model.add(Activation("sigmoid"))

model.compile(loss="binary_crossentropy", optimizer="rmsprop", metrics=["accuracy"])

# this is the augmentation configuration we will use for training
train_datagen = ImageDataGenerator(
    rescale=1. / 255,
    shear_range=0.2,
    zoom_range=0.2,
    horizontal_flip=True)

# this is the augmentation configuration we will use for testing:
# only rescaling
test_datagen = ImageDataGenerator(rescale=1. / 255)

train_generator = train_datagen.flow_from_directory(
    train_data_dir,
    target_size=(img_width, img_height),
    classes=args.classes,
    batch_size=batch_size,
    class_mode="binary")

validation_generator = test_datagen.flow_from_directory(
    validation_data_dir,
    target_size=(img_width, img_height),
    classes=args.classes,
    batch_size=batch_size,
    class_mode="binary")

model.fit(
    train_generator,
    epochs=epochs,
    validation_data=validation_generator)

loss, accuracy = model.evaluate(validation_generator, verbose=0)
print(f"validation accuracy: {accuracy:.3f} ({validation_generator.samples} images)")
