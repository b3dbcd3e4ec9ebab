"""Op declarations. Every module here registers its ops on import; adding a module adds its ops."""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
