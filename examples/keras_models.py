"""Keras models for cohort's keras framework (``[model] factory = "examples/keras_models.py:<name>"``).

Each function returns a compiled Keras 3 model: cohort trains it with its own fit(), optimizer, loss
and metrics, and federates its weights.
"""

import keras


def binary_classifier(input_shape, outputs):
    """The seeds' binary classifier: Dense 128 relu, then one sigmoid unit; Adam 0.001, binary cross-entropy."""
    model = keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def digits_mlp(input_shape, outputs):
    """A small MNIST classifier: flatten, Dense 200 relu, softmax over the classes; SGD 0.1."""
    model = keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(200, activation="relu"),
        keras.layers.Dense(outputs, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
