"""`imagefit.keras.preprocessing.image` mirrors `keras.preprocessing.image`, for code that
imports the module (`from keras.preprocessing import image` becomes
`from imagefit.keras.preprocessing import image`)."""
