"""The data layer of training, one module per concern (import each name from its module):

``sources``        one split from the Hub, an imagefolder tree or a save_to_disk directory (load_image_dataset)
``columns``        the ``image`` / ``label`` columns, class names, labels matched to a model's by name
``splits``         split names, class-balanced subsets, the validation hold-out, untrainable-split checks
``availability``   DatasetUnavailableError, the bounded Hub probe, offline mode
``fashion_mnist``  Fashion-MNIST from the Debian idx files (the offline fallback)
``transforms``     evaluation / training transforms built from the image processor
``loader``         the seeded (pixel_values, labels) DataLoader
"""
