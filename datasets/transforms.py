"""The reference's image transforms (SPEC.md section 3): a fixed resize, no crop."""
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAYSCALE_P = 0.2
JITTER = 0.4  # brightness, contrast, saturation and hue


def train_transform(size=256):
    return T.Compose([
        T.Resize((size, size)),
        T.RandomGrayscale(p=GRAYSCALE_P),
        T.ColorJitter(JITTER, JITTER, JITTER, JITTER),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(size=256):
    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
