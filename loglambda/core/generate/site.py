"""The simulated web site and its visitors, from which traffic lines are sampled.

Everything here is built once per run from the seed (asset hashes, product slugs, user
ids, client addresses), so a seed describes one site and one population of visitors.
Routes are templates (a route class, a method, the status of success, size and latency
distributions) with concrete targets; clients belong to an audience (browser, crawler,
script, scanner, monitor) that decides what they request. Popularity is Zipf-like at
every level: a few pages, clients and crawlers account for most lines, with a long tail.
Both are flattened into numpy arrays so a chunk samples them without Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple
from urllib.parse import quote_plus

import numpy as np
import pyarrow as pa

from loglambda.core.generate import vocab as vocab
from loglambda.core.generate.common import F64, I64, Bools, grouped_cdf, strings, zipf_weights

METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
GET, POST, PUT, DELETE, PATCH, HEAD = range(6)
PROTOCOLS: Final = ("HTTP/1.1", "HTTP/2.0", "HTTP/1.0")

# Route classes drive the status, size and latency rules.
PAGE, ASSET, IMAGE, API, SEARCH, LOGIN, ADMIN, HEALTH, PROBE, REDIRECT, FEED = range(11)
# Who sends a request decides what is requested.
BROWSER, CRAWLER, SCRIPT, SCANNER, MONITOR = range(5)

# fmt: off
# Share of each route class in the requests of each audience.
AUDIENCE_CLASSES: Final[dict[int, dict[int, float]]] = {
    BROWSER: {PAGE: 0.2, ASSET: 0.3, IMAGE: 0.2, API: 0.19, SEARCH: 0.05, LOGIN: 0.02,
              ADMIN: 0.004, REDIRECT: 0.005, FEED: 0.002},
    CRAWLER: {PAGE: 0.74, IMAGE: 0.12, FEED: 0.07, REDIRECT: 0.04, ASSET: 0.03},
    SCRIPT: {API: 0.93, LOGIN: 0.05, SEARCH: 0.02},
    SCANNER: {PROBE: 0.86, PAGE: 0.04, ADMIN: 0.07, LOGIN: 0.03},
    MONITOR: {HEALTH: 1.0},
}
# fmt: on
# Zipf exponent within a class: crawlers walk the site evenly, people follow popularity.
AUDIENCE_SKEW: Final = {BROWSER: 1.0, CRAWLER: 0.2, SCRIPT: 0.9, SCANNER: 0.6, MONITOR: 0.5}


class Route(NamedTuple):
    cls: int
    method: int
    targets: list[str]  # path + query; the first is the most requested
    ok: int  # status of a successful request
    size: int | tuple[float, float]  # fixed bytes, or (median bytes, log sigma)
    lat: tuple[float, float]  # (median seconds, log sigma)


@dataclass(frozen=True)
class Routes:
    """Route templates as parallel arrays; ``targets`` holds every concrete target."""

    targets: pa.StringArray
    first: I64  # per template: index of its first target
    count: I64
    cls: I64
    method: I64
    ok: I64
    size_fixed: I64  # -1: drawn per request from (size_mu, size_sigma)
    size_mu: F64
    size_sigma: F64
    lat_mu: F64
    lat_sigma: F64
    cdf: F64  # grouped by audience, over ``items`` (template ids)
    items: I64
    pages: list[str]  # popular pages, for internal referrers


@dataclass(frozen=True)
class Clients:
    ip: pa.StringArray
    ua: pa.StringArray  # each client keeps one user agent
    proto: I64
    admin: Bools  # staff who may open /admin
    head: Bools  # uptime monitors that send HEAD
    audience: I64
    cdf: F64  # grouped by audience, over ``items`` (client ids)
    items: I64


def uuid4(rng: np.random.Generator) -> str:
    h = bytearray(rng.bytes(16))
    h[6] = (h[6] & 0x0F) | 0x40
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _sample(rng: np.random.Generator, pool: list[str], n: int) -> list[str]:
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


# fmt: off
def _page_routes(rng: np.random.Generator, products: list[str], blog: list[str]) -> list[Route]:
    def page(targets: list[str], size: float, lat: float) -> Route:
        return Route(PAGE, GET, targets, 200, (size, 0.2), (lat, 0.55))

    head = [page(["/"], 38_000, 0.035),
            page(["/products", "/products?page=2", "/products?sort=price_asc"], 52_000, 0.07),
            page(["/cart"], 21_000, 0.04), page(["/account"], 17_000, 0.05),
            page(["/checkout"], 24_000, 0.09)]
    tail = [page([f"/categories/{c}", f"/categories/{c}?page=2", f"/categories/{c}?sort=newest"],
                 45_000, 0.06) for c in vocab.CATEGORIES]
    tail += [page([f"/products/{s}", f"/products/{s}?ref=recommendations",
                   f"/products/{s}?utm_source=newsletter&utm_medium=email&utm_campaign=bf",
                   f"/products/{s}?variant=2"], 61_000, 0.055) for s in products]
    tail += [page([p], 15_000, 0.02) for p in ("/about", "/contact", "/pricing", "/faq",
             "/careers", "/terms", "/privacy", "/account/orders", "/signup", "/blog",
             "/gift-cards")]
    tail += [page([b], 27_000, 0.025) for b in blog]
    return head + [tail[i] for i in rng.permutation(len(tail))]


def _static_routes(rng: np.random.Generator, products: list[str], blog: list[str]) -> list[Route]:
    def build_hash() -> str:  # content hash of the current front-end build
        return rng.bytes(4).hex()

    lat, img_lat = (0.0012, 0.6), (0.003, 0.8)
    fixed = [("/assets/app.{}.js", 245_112), ("/assets/vendor.{}.js", 612_480),
             ("/assets/app.{}.css", 48_211), ("/assets/runtime.{}.js", 3_122),
             ("/favicon.ico", 15_086), ("/assets/fonts/inter-var.{}.woff2", 312_004),
             ("/manifest.webmanifest", 512), ("/sw.js", 2_210), ("/apple-touch-icon.png", 9_872)]
    out = [Route(ASSET, GET, [p.format(build_hash())], 200, size, lat) for p, size in fixed]
    chunks = [f"/static/js/chunk-{i}.{build_hash()}.js" for i in range(24)]
    chunks += [f"/static/css/{n}.{build_hash()}.css"
               for n in ("product", "checkout", "blog", "account", "search", "admin")]
    sizes = np.exp(rng.normal(np.log(28_000), 0.9, len(chunks))).astype(int)
    out += [Route(ASSET, GET, [c], 200, int(s), lat) for c, s in zip(chunks, sizes, strict=True)]
    imgs = ["/images/logo.svg"] + [f"/images/hero/{n}.webp" for n in
            ("winter-sale", "new-in", "gifts", "outdoor", "kitchen", "audio")]
    rest = [f"/images/products/{s}-{k}.jpg" for s in products[:60] for k in (1, 2)]
    rest += [f"/images/blog/{b.rsplit('/', 1)[-1]}.jpg" for b in blog[:30]]
    imgs += [rest[i] for i in rng.permutation(len(rest))]
    # Each image has one size: it is the same file every time.
    img_sizes = np.exp(rng.normal(np.log(140_000), 0.6, len(imgs))).astype(int)
    img_sizes[0] = 4_211
    out += [Route(IMAGE, GET, [p], 200, int(s), img_lat)
            for p, s in zip(imgs, img_sizes, strict=True)]
    return out


def _api_routes(rng: np.random.Generator, queries: list[str]) -> list[Route]:
    uids = [str(u) for u in rng.choice(np.arange(1000, 250_000), 2000, replace=False)]
    orders = [uuid4(rng) for _ in range(1500)]
    skus = [f"SKU-{n:06d}" for n in rng.integers(0, 999_999, 300)]
    items = [str(i) for i in rng.integers(10_000, 99_999, 500)]
    sessions = [uuid4(rng) for _ in range(300)]
    pages = [str(p) for p in range(1, 11)]
    R = Route
    return [
        R(API, GET, ["/api/v1/me"], 200, (900, 0.2), (0.012, 0.5)),
        R(API, POST, ["/api/v1/events"], 204, 0, (0.004, 0.5)),
        R(API, GET, [f"/api/v1/products/{s}" for s in skus], 200, (2400, 0.4), (0.018, 0.6)),
        R(API, GET, ["/api/v1/cart"], 200, (1500, 0.6), (0.02, 0.5)),
        R(API, GET, [f"/api/v1/recommendations?user={u}&limit=12" for u in uids], 200,
          (5200, 0.3), (0.09, 0.7)),
        R(API, GET, [f"/api/v1/users/{u}" for u in uids], 200, (1400, 0.3), (0.015, 0.6)),
        R(API, POST, ["/api/v1/cart/items"], 201, (600, 0.3), (0.03, 0.5)),
        R(API, GET, [f"/api/v1/orders/{o}" for o in orders], 200, (3100, 0.5), (0.025, 0.6)),
        R(API, GET, [f"/api/v1/users/{u}/orders" for u in uids], 200, (9000, 0.8), (0.04, 0.7)),
        R(API, GET, [f"/api/v1/orders?page={p}&limit=20" for p in pages], 200, (9500, 0.4),
          (0.05, 0.6)),
        R(API, GET, [f"/api/v1/products?category={c}&page={p}" for c in vocab.CATEGORIES
                     for p in pages[:3]], 200, (14_000, 0.4), (0.06, 0.6)),
        R(API, POST, ["/graphql"], 200, (3800, 0.9), (0.08, 0.9)),
        R(API, POST, ["/api/v1/auth/refresh"], 200, (700, 0.1), (0.02, 0.4)),
        R(API, GET, [f"/api/v1/inventory/{s}" for s in skus], 200, (180, 0.2), (0.01, 0.5)),
        R(API, GET, [f"/api/v1/notifications?since={1793000000 + 3600 * i}" for i in range(48)],
          200, (700, 1.0), (0.02, 0.6)),
        R(API, DELETE, [f"/api/v1/cart/items/{i}" for i in items], 204, 0, (0.02, 0.5)),
        R(API, POST, ["/api/v1/orders"], 201, (1100, 0.3), (0.18, 0.5)),
        R(API, PUT, [f"/api/v1/users/{u}" for u in uids[:500]], 200, (1400, 0.3), (0.04, 0.5)),
        R(API, PATCH, [f"/api/v1/users/{u}/preferences" for u in uids[:500]], 200, (300, 0.3),
          (0.03, 0.5)),
        R(API, POST, ["/api/v1/payments"], 201, (900, 0.2), (0.45, 0.5)),
        R(API, POST, ["/api/v1/auth/logout"], 204, 0, (0.01, 0.4)),
        R(API, DELETE, [f"/api/v1/sessions/{s}" for s in sessions], 204, 0, (0.01, 0.4)),
        R(SEARCH, GET, [f"/api/v2/search?q={q}&limit=20" for q in queries], 200, (6000, 0.5),
          (0.12, 0.8)),
    ]


def _other_routes(rng: np.random.Generator, queries: list[str], blog: list[str]) -> list[Route]:
    R = Route
    reports = [f"/admin/reports/{y}-{m:02d}" for y in (2025, 2026) for m in range(1, 13)]
    return [
        R(SEARCH, GET, [f"/search?q={q}" for q in queries]
          + [f"/search?q={q}&page=2" for q in queries[:50]], 200, (24_000, 0.35), (0.16, 0.8)),
        R(LOGIN, GET, ["/login", "/login?next=%2Faccount", "/login?next=%2Fcheckout"], 200,
          (6100, 0.05), (0.02, 0.4)),
        R(LOGIN, POST, ["/login"], 302, 0, (0.25, 0.25)),
        R(LOGIN, POST, ["/api/v1/auth/login"], 200, (820, 0.1), (0.23, 0.25)),
        R(LOGIN, GET, ["/logout"], 302, 0, (0.01, 0.4)),
        R(LOGIN, GET, ["/password/reset"], 200, (5400, 0.05), (0.02, 0.4)),
        R(LOGIN, GET, ["/admin/login"], 200, (4_800, 0.05), (0.02, 0.4)),
        R(LOGIN, POST, ["/admin/login"], 302, 0, (0.26, 0.25)),
        R(ADMIN, GET, ["/admin", "/admin/"], 200, (18_000, 0.3), (0.08, 0.6)),
        R(ADMIN, GET, ["/admin/orders?status=pending", "/admin/orders?status=shipped"], 200,
          (64_000, 0.4), (0.3, 0.7)),
        R(ADMIN, GET, ["/admin/users", "/admin/users?page=2"], 200, (41_000, 0.4), (0.2, 0.7)),
        R(ADMIN, GET, ["/admin/settings"], 200, (22_000, 0.2), (0.05, 0.5)),
        R(ADMIN, GET, reports, 200, (120_000, 0.5), (1.2, 0.6)),
        R(HEALTH, GET, ["/healthz"], 200, 2, (0.0008, 0.4)),
        R(HEALTH, GET, ["/readyz"], 200, 2, (0.0009, 0.4)),
        R(HEALTH, GET, ["/health"], 200, 15, (0.002, 0.5)),
        R(HEALTH, GET, ["/status"], 200, 118, (0.003, 0.5)),
        *(R(PROBE, POST if p in vocab.POST_PROBES else GET, [p], 404, 0, (0.0006, 0.5))
          for p in vocab.PROBES),
        R(REDIRECT, GET, ["/index.html"], 301, 162, (0.0004, 0.4)),
        R(REDIRECT, GET, ["/home"], 301, 162, (0.0004, 0.4)),
        R(REDIRECT, GET, ["/shop", "/shop/"], 301, 162, (0.0004, 0.4)),
        R(REDIRECT, GET, [f"/products.php?id={i}" for i in rng.integers(1, 5000, 200)], 301, 162,
          (0.002, 0.4)),
        R(REDIRECT, GET, [f"/old-blog/{b.rsplit('/', 1)[-1]}" for b in blog], 301, 162,
          (0.0004, 0.4)),
        R(FEED, GET, ["/robots.txt"], 200, 312, (0.0007, 0.4)),
        R(FEED, GET, ["/sitemap.xml"], 200, 2_840, (0.002, 0.4)),
        R(FEED, GET, ["/sitemap-products.xml"], 200, 48_211, (0.03, 0.4)),
        R(FEED, GET, ["/blog/feed.xml"], 200, 36_400, (0.02, 0.4)),
        R(FEED, GET, ["/ads.txt"], 200, 97, (0.0007, 0.4)),
    ]
# fmt: on


def search_phrases(rng: np.random.Generator, n: int) -> list[str]:
    words = vocab.QUERY_WORDS
    picks = [rng.integers(0, len(words), int(rng.integers(1, 4))) for _ in range(n)]
    return list(dict.fromkeys(" ".join(words[i] for i in p) for p in picks))


def build_routes(rng: np.random.Generator) -> Routes:
    combos = [f"{a}-{c}-{n}" for a in vocab.ADJECTIVES for c in vocab.COLORS for n in vocab.NOUNS]
    products = _sample(rng, combos, 120)
    posts = _sample(rng, [t.format(n) for t in vocab.BLOG_TITLES for n in vocab.NOUNS], 60)
    blog = [f"/blog/{y}/{p}" for y, p in zip(rng.integers(2019, 2027, 60), posts, strict=True)]
    # Browsers send spaces as '+' and UTF-8 as %XX.
    queries = [quote_plus(p) for p in search_phrases(rng, 400)]
    routes = _page_routes(rng, products, blog) + _static_routes(rng, products, blog)
    routes += _api_routes(rng, queries) + _other_routes(rng, queries, blog)
    # Targets go into lines unescaped, between spaces and quotes.
    assert not any(c in t for r in routes for t in r.targets for c in ' "\n\t')
    counts = np.array([len(r.targets) for r in routes], dtype=np.int64)
    drawn = [r.size if isinstance(r.size, tuple) else (1.0, 0.0) for r in routes]
    cls = np.array([r.cls for r in routes], dtype=np.int64)
    weights, items = [], []
    for audience in (BROWSER, CRAWLER, SCRIPT, SCANNER, MONITOR):
        w = np.zeros(len(routes))
        for c, share in AUDIENCE_CLASSES[audience].items():
            members = np.flatnonzero(cls == c)
            z = zipf_weights(len(members), AUDIENCE_SKEW[audience])
            w[members] = share * z / z.sum()
        keep = np.flatnonzero(w > 0)
        weights.append(w[keep])
        items.append(keep)
    return Routes(
        targets=strings([t for r in routes for t in r.targets]),
        first=(np.cumsum(counts) - counts).astype(np.int64),
        count=counts,
        cls=cls,
        method=np.array([r.method for r in routes], dtype=np.int64),
        ok=np.array([r.ok for r in routes], dtype=np.int64),
        size_fixed=np.array([r.size if isinstance(r.size, int) else -1 for r in routes]),
        size_mu=np.log([d[0] for d in drawn]),
        size_sigma=np.array([d[1] for d in drawn]),
        lat_mu=np.log([r.lat[0] for r in routes]),
        lat_sigma=np.array([r.lat[1] for r in routes]),
        cdf=grouped_cdf(weights),
        items=np.concatenate(items).astype(np.int64),
        pages=[r.targets[0] for r in routes if r.cls == PAGE][:60],
    )


def _ipv4(rng: np.random.Generator, firsts: tuple[int, ...]) -> str:
    a = firsts[int(rng.integers(0, len(firsts)))]
    b, c, d = (int(x) for x in rng.integers(0, 256, 3))
    return f"{a}.{b}.{c}.{max(1, d)}"


def _ipv6(rng: np.random.Generator) -> str:
    prefix = vocab.ISP_V6[int(rng.integers(0, len(vocab.ISP_V6)))]
    groups = [f"{g:x}" for g in rng.integers(0, 65536, 6)]
    if rng.random() < 0.3:  # short interface ids compress to '::'
        return f"{prefix}:{groups[0]}:{groups[1]}::{groups[2]}"
    return ":".join([prefix, *groups])


def random_ip(rng: np.random.Generator) -> str:
    """A residential address: mostly IPv4, some IPv6."""
    return _ipv6(rng) if rng.random() < 0.12 else _ipv4(rng, vocab.ISP_V4)


def _pick(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...]) -> str:
    w = np.array([x[1] for x in weighted], dtype=np.float64)
    return weighted[int(rng.choice(len(w), p=w / w.sum()))][0]


def _in_range(rng: np.random.Generator, pattern: str, third: tuple[int, int]) -> str:
    return pattern.format(int(rng.integers(*third)), int(rng.integers(1, 255)))


def build_clients(rng: np.random.Generator, browsers: int = 3000) -> Clients:
    """A few thousand clients: browsers, published-range crawlers, scripts, scanners."""
    rows: list[tuple[int, str, str, int, float, bool]] = []  # audience, ip, ua, proto, w, head
    for w in zipf_weights(browsers, 0.8).tolist():
        http2 = 1 if rng.random() < 0.7 else 0
        rows.append((BROWSER, random_ip(rng), _pick(rng, vocab.BROWSER_UAS), http2, w, False))
    for agent, pattern, third, n, share in vocab.CRAWLERS:
        for k in range(n):  # a crawler's first addresses do most of its work
            ip = _in_range(rng, pattern, third)
            rows.append((CRAWLER, ip, agent, 0, share / (k + 1), False))
    for w in zipf_weights(150, 1.0).tolist():
        ip = _ipv4(rng, vocab.CLOUD_V4) if rng.random() < 0.6 else random_ip(rng)
        rows.append((SCRIPT, ip, _pick(rng, vocab.SCRIPT_UAS), 0, w, False))
    for w in zipf_weights(200, 0.8).tolist():
        ip = _ipv6(rng) if rng.random() < 0.05 else _ipv4(rng, vocab.SCAN_V4)
        http10 = 2 if rng.random() < 0.15 else 0
        rows.append((SCANNER, ip, _pick(rng, vocab.SCANNER_UAS), http10, w, False))
    for agent, pattern, third, n, head in vocab.MONITORS:
        for _ in range(n):
            rows.append((MONITOR, _in_range(rng, pattern, third), agent, 0, 1.0, head))
    audience = np.array([r[0] for r in rows], dtype=np.int64)
    weight = np.array([r[4] for r in rows])
    admin = np.zeros(len(rows), dtype=np.bool_)
    admin[rng.choice(200, 4, replace=False)] = True  # a few staff among the regular browsers
    groups = [np.flatnonzero(audience == a) for a in range(5)]
    return Clients(
        ip=strings([r[1] for r in rows]),
        ua=strings([r[2] for r in rows]),
        proto=np.array([r[3] for r in rows], dtype=np.int64),
        admin=admin,
        head=np.array([r[5] for r in rows], dtype=np.bool_),
        audience=audience,
        cdf=grouped_cdf([weight[g] for g in groups]),
        items=np.concatenate(groups).astype(np.int64),
    )
