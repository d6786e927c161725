"""Route map: method + normalised path → RouteMatch, default deny."""

from gateway.routemap.normalise import PathRejected, normalise_path
from gateway.routemap.routes import Route, RouteError, RouteMap, RouteMatch

__all__ = ["PathRejected", "Route", "RouteError", "RouteMap", "RouteMatch", "normalise_path"]
