"""Word lists of generated web traffic: user agents, crawlers, referrers, probes, words.

Pure data, kept apart from the code that samples it (``generate_site``). The user agents
are real strings of current browsers, crawlers, HTTP libraries and scanners, with weights
close to what a European e-commerce site sees; crawler addresses sit in the ranges
those crawlers publish, so bot-verification logic downstream has something to check.
"""

from __future__ import annotations

from typing import Final

# fmt: off
BROWSER_UAS: Final = (
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36", 22),  # noqa: E501
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36", 6),  # noqa: E501
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36", 8),  # noqa: E501
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36", 2),  # noqa: E501
    ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Mobile Safari/537.36", 18),  # noqa: E501
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", 14),  # noqa: E501
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1", 5),  # noqa: E501
    ("Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", 2),  # noqa: E501
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15", 5),  # noqa: E501
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0", 5),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:132.0) Gecko/20100101 Firefox/132.0", 1.5),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0", 1.5),
    ("Mozilla/5.0 (Android 14; Mobile; rv:132.0) Gecko/132.0 Firefox/132.0", 0.8),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0", 6),  # noqa: E501
    ("Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36", 2.5),  # noqa: E501
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36 OPR/114.0.0.0", 1),  # noqa: E501
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/130.0.6723.90 Mobile/15E148 Safari/604.1", 2),  # noqa: E501
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/22A3354 [FBAN/FBIOS;FBAV/485.0.0.38.104;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/18.0;FBLC/en_US]", 1),  # noqa: E501
)

# (user agent, address pattern, third-octet range, addresses, weight): published crawler ranges.
CRAWLERS: Final = (
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "66.249.{}.{}", (64, 80), 12, 30),  # noqa: E501
    ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.116 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "66.249.{}.{}", (64, 80), 12, 30),  # noqa: E501
    ("Googlebot-Image/1.0", "66.249.{}.{}", (64, 80), 4, 5),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36", "157.55.{}.{}", (39, 40), 10, 14),  # noqa: E501
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "54.36.{}.{}", (148, 150), 6, 10),  # noqa: E501
    ("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", "185.191.{}.{}", (171, 172), 6, 7),  # noqa: E501
    ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", "5.255.{}.{}", (231, 232), 3, 3),  # noqa: E501
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)", "20.171.{}.{}", (206, 208), 4, 5),  # noqa: E501
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)", "3.84.{}.{}", (0, 256), 3, 3),  # noqa: E501
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)", "17.241.{}.{}", (75, 76), 3, 2),  # noqa: E501
    ("DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)", "20.191.{}.{}", (45, 46), 2, 1),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "69.171.{}.{}", (249, 250), 3, 2),  # noqa: E501
    ("Mozilla/5.0 (compatible;PetalBot;+https://webmaster.petalsearch.com/site/petalbot)", "114.119.{}.{}", (128, 160), 3, 2),  # noqa: E501
)

SCRIPT_UAS: Final = (
    ("MyShop/5.2.1 (iPhone; iOS 18.1; Scale/3.00)", 10), ("okhttp/4.12.0", 8), ("curl/8.5.0", 3),
    ("python-requests/2.32.3", 4), ("Go-http-client/2.0", 2), ("axios/1.7.7", 3),
    ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", 1),
    ("Apache-HttpClient/4.5.14 (Java/17.0.9)", 1), ("PostmanRuntime/7.42.0", 1),
)

SCANNER_UAS: Final = (
    ("Mozilla/5.0 zgrab/0.x", 4), ("-", 3), ("python-requests/2.25.1", 2), ("Go-http-client/1.1", 2),  # noqa: E501
    ("Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)", 2),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/81.0.4044.129 Safari/537.36", 3),  # noqa: E501
    ("Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)", 1),
    ("curl/7.29.0", 1), ("masscan/1.3 (https://github.com/robertdavidgraham/masscan)", 1),
)

# (user agent, address pattern, third-octet range, addresses, uses HEAD)
MONITORS: Final = (
    ("kube-probe/1.31", "10.42.{}.{}", (0, 4), 3, False),
    ("ELB-HealthChecker/2.0", "10.0.{}.{}", (1, 3), 2, False),
    ("Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", "69.162.{}.{}", (124, 125), 2, True),  # noqa: E501
    ("Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)", "5.172.{}.{}", (196, 197), 1, False),
)

SEARCH_REFERRERS: Final = (
    ("https://www.google.com/", 40), ("https://www.google.de/", 6),
    ("https://www.google.co.uk/", 5), ("https://www.bing.com/", 8), ("https://duckduckgo.com/", 4),
    ("https://search.yahoo.com/", 1), ("https://yandex.ru/", 1), ("https://www.ecosia.org/", 1),
)
SOCIAL_REFERRERS: Final = (
    ("https://t.co/", 4), ("https://l.facebook.com/", 5), ("https://www.facebook.com/", 3),
    ("https://www.reddit.com/r/BuyItForLife/", 2), ("https://news.ycombinator.com/", 1),
    ("https://www.linkedin.com/", 1), ("https://www.instagram.com/", 3),
    ("android-app://com.google.android.gm/", 1),
)

PROBES: Final = (
    "/wp-login.php", "/.env", "/wp-admin/", "/xmlrpc.php", "/.git/config", "/phpmyadmin/index.php",
    "/.git/HEAD", "/admin.php", "/config.json", "/.aws/credentials", "/pma/", "/server-status",
    "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php", "/actuator/env", "/actuator/health",
    "/cgi-bin/luci/;stok=/locale", "/boaform/admin/formLogin", "/solr/admin/info/system",
    "/owa/auth/logon.aspx", "/HNAP1/", "/.DS_Store", "/backup.sql", "/console", "/login.action",
    "/_ignition/execute-solution", "/wp-content/plugins/wp-file-manager/readme.txt",
    "/?XDEBUG_SESSION_START=phpstorm", "/.well-known/security.txt",
    "/index.php?s=/Index/\\x5Cthink\\x5Capp/invokefunction&function=call_user_func_array&vars[0]=md5&vars[1][]=HelloThinkPHP",
)
POST_PROBES: Final = frozenset(
    {"/xmlrpc.php", "/boaform/admin/formLogin", "/_ignition/execute-solution", "/HNAP1/"}
)

CATEGORIES: Final = (
    "shoes", "bags", "audio", "home", "kitchen", "office", "outdoor", "accessories", "lighting",
    "furniture", "sale", "new-arrivals", "gifts", "men", "women", "kids", "electronics", "garden",
    "books", "beauty",
)
ADJECTIVES: Final = (
    "classic", "modern", "vintage", "organic", "wireless", "compact", "ultra", "premium", "eco",
    "smart", "rustic", "minimal", "deluxe", "portable", "handmade", "nordic", "urban", "retro",
    "essential", "pro",
)
COLORS: Final = ("black", "white", "navy", "olive", "sand", "red", "grey", "oak", "teal", "rose")
NOUNS: Final = (
    "sneakers", "backpack", "headphones", "lamp", "mug", "chair", "desk", "jacket", "watch",
    "bottle", "speaker", "notebook", "kettle", "blanket", "sunglasses", "wallet", "keyboard",
    "plant-pot", "candle", "teapot",
)
BLOG_TITLES: Final = (
    "how-to-choose-the-right-{}", "7-ways-to-style-your-{}", "caring-for-your-{}",
    "the-story-behind-our-{}", "why-every-home-needs-a-{}", "{}-buying-guide",
)
# Search words, including non-ASCII and quotes, so URL-encoding and JSON escaping show up.
QUERY_WORDS: Final = (
    "red", "running", "shoes", "leather", "bag", "wireless", "headphones", "desk", "lamp", "gift",
    "for", "men", "women", "kids", "sale", "café", "crème", "usb-c", "cable", "size 42",
    "waterproof", "jacket", "mug", "set", '"oak"',
)

# First octets of residential ISPs, cloud providers and scanner-heavy hosting ranges.
ISP_V4: Final = (
    24, 31, 37, 46, 62, 66, 71, 73, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90,
    91, 92, 93, 94, 95, 98, 99, 100, 108, 109, 151, 176, 178, 188, 212, 217,
)
CLOUD_V4: Final = (3, 13, 18, 34, 35, 44, 52, 54)
SCAN_V4: Final = (45, 80, 89, 91, 104, 141, 159, 162, 167, 178, 185, 193, 194, 195, 212)
ISP_V6: Final = (
    "2a02:8109", "2a01:cb00", "2600:1700", "2a00:23c5", "2607:fb90", "2003:e2", "2a02:2f0e",
)
# fmt: on
