"""S3-compatible DVC remotes: which URLs and endpoints are accepted, how credentials reach DVC's S3
filesystem, and how an object's content is proven there.

Credentials come either from settings (an access key id, secret and optional session token, read by
whoever builds the settings, e.g. the hook from an ``aws`` connection) or, when none are given, from
what botocore finds on the worker (``AWS_*`` variables, ``~/.aws``, an instance or pod role). Given
credentials travel like the SSH password: in variables set only for the ``dvc_cli`` child process,
which hands them to DVC's S3 filesystem in memory and drops the worker's ambient ``AWS_*`` credential
variables, so the given ones win. The endpoint and region are not secrets: they are written to the
clone's git-ignored ``.dvc/config.local`` and handed to the child the same way; the child ignores
remote options from DVC config files that would send requests elsewhere or load other credentials
(the registry's tracked ``.dvc/config`` is written by whoever can push). Nothing here imports Airflow.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dataset_registry.registry_errors import RegistryError

ENV_MANAGED = "DATASET_REGISTRY_S3"  # "1": the remote's S3 settings come from the registry settings only
ENV_ACCESS_KEY_ID = "DATASET_REGISTRY_S3_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "DATASET_REGISTRY_S3_SECRET_ACCESS_KEY"
ENV_SESSION_TOKEN = "DATASET_REGISTRY_S3_SESSION_TOKEN"
ENV_ENDPOINT_URL = "DATASET_REGISTRY_S3_ENDPOINT_URL"
ENV_REGION = "DATASET_REGISTRY_S3_REGION"
# The only options taken from DVC's config files (the remote's address). Anyone who can push writes the
# registry's tracked .dvc/config: an endpoint, profile, credentials file, acl/grant, SSE key or timeout
# set there would redirect, expose or break the worker's uploads, so everything else comes from the
# registry settings or is left at DVC's default.
TRUSTED_REMOTE_OPTIONS = ("url", "name")
# The worker's own credentials, ignored by the child when the settings give credentials.
AMBIENT_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # AWS's rules for new buckets (also MinIO's)
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]{0,254}")  # no '.', '..', nor a leading '-'
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_PATH = re.compile(r"[A-Za-z0-9._~/-]{0,200}")
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: what AWS and MinIO issue


class S3SettingsError(RegistryError):
    """An S3 remote URL, endpoint, region or credential is malformed: fix the setting, retrying cannot help."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix); anything else is refused, naming the rule.

    The bucket follows AWS's naming rules (3-63 lowercase letters, digits, dots and hyphens, not an IP
    address, no ``..``); the prefix is ``/``-separated segments of letters, digits and ``._=+-``, each
    starting with a letter, digit or ``_`` (so no ``.``/``..`` and nothing option-like), no empty ones
    but a trailing ``/``. No user part, query or fragment: the URL is written to the registry's tracked
    ``.dvc/config`` and must never carry a credential.
    """
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise S3SettingsError(f"S3 remote {str(url)[:100]!r} must start with s3://")
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if "@" in url or ":" in bucket:  # not shown: the part before '@' may be a secret
        raise S3SettingsError("S3 remote: no user, password or port in an s3:// URL (credentials come from the "
                              "settings or the worker's AWS credentials, the endpoint from endpoint_url)")
    shown = url if len(url) <= 100 else url[:100] + "..."
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or bucket.startswith("xn--") or bucket.endswith("-s3alias") \
            or _is_ip(bucket):
        raise S3SettingsError(f"S3 remote {shown!r}: bucket {bucket[:70]!r} is not a valid bucket name (3-63 "
                              "lowercase letters, digits, '.' and '-', starting and ending with a letter or digit, "
                              "no '..', not an IP address)")
    segments = prefix[:-1].split("/") if prefix.endswith("/") else prefix.split("/")
    if prefix and (len(prefix) > 700 or not all(_PREFIX_SEGMENT.fullmatch(s) for s in segments)):
        raise S3SettingsError(f"S3 remote {shown!r}: the prefix must be '/'-separated names of letters, digits "
                              "and '._=+-', each starting with a letter, digit or '_' (no '.' or '..', no empty "
                              "names, no spaces, quotes, '?' or '#')")
    return bucket, prefix.rstrip("/")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def validate_endpoint_url(url: str) -> str:
    """An S3 endpoint (MinIO, Ceph, a private AWS endpoint): ``http(s)://host[:port][/path]``, no user
    part, query or fragment. Returned unchanged."""
    shown = type(url).__name__ if not isinstance(url, str) else "(not shown: it has a user part)" if "@" in url \
        else repr(url[:100])
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or any(c.isspace() for c in url) \
            or any(c in url for c in "\"'\\\0?#"):
        raise S3SettingsError(f"S3 endpoint_url {shown} must be an http:// or https:// URL without spaces, quotes, "
                              "query or fragment")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.netloc.rsplit(":", 1)[0] if port not in (None, -1) else parts.netloc
    if "@" in parts.netloc or not _HOST.fullmatch(host or "") or port == -1 or port == 0 \
            or parts.query or parts.fragment or not _PATH.fullmatch(parts.path) or "/../" in f"{parts.path}/":
        raise S3SettingsError(f"S3 endpoint_url {shown} must be http(s)://host[:port][/path]: no user or password in "
                              "it, no query or fragment")
    return url


@dataclass(frozen=True)
class S3Access:
    """How the worker reaches an S3 remote beyond what botocore finds by itself.

    :param access_key_id: the access key id (with ``secret_access_key``); None: botocore's own chain
    :param secret_access_key: the secret access key (handed to DVC through the child's environment only)
    :param session_token: a temporary credential's session token (with the two above)
    :param endpoint_url: an S3-compatible endpoint (``http(s)://host[:port]``); None: AWS
    :param region: the bucket's region (e.g. ``eu-west-1``); None: botocore's default
    """

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str | None = None

    def __post_init__(self):
        for name in ("access_key_id", "secret_access_key", "session_token", "endpoint_url", "region"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise S3SettingsError(f"S3 {name} must be text, got {type(value).__name__}")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            given, missing = ("an access key id", "a secret access key") if self.access_key_id else \
                ("a secret access key", "an access key id")
            raise S3SettingsError(f"S3 credentials: {given} without {missing}: give both, or neither (then the "
                                  "worker's own AWS credentials are used)")
        if self.session_token and not self.access_key_id:
            raise S3SettingsError("S3 credentials: a session token without an access key id and secret")
        if self.access_key_id and (len(self.access_key_id) > 256 or not _TOKEN_TEXT.fullmatch(self.access_key_id)):
            raise S3SettingsError("S3 access key id must be printable text without spaces (at most 256 characters)")
        for name in ("secret_access_key", "session_token"):
            value = getattr(self, name)  # never quoted: they are secrets
            if value and (len(value) > 8192 or not _TOKEN_TEXT.fullmatch(value)):
                raise S3SettingsError(f"S3 {name.replace('_', ' ')} must be printable text without spaces")
        if self.endpoint_url is not None:
            validate_endpoint_url(self.endpoint_url)
        if self.region is not None and not _REGION.fullmatch(self.region):
            raise S3SettingsError(f"S3 region {self.region[:80]!r} is not a region name (like eu-west-1)")

    @property
    def secrets(self) -> list[str]:
        """Values no message or log may show."""
        return [s for s in (self.secret_access_key, self.session_token) if s]

    def child_variables(self) -> dict[str, str]:
        """The variables of ``dvc_cli`` children for this remote: the endpoint and region, and the
        credentials when given (else botocore's own chain finds them)."""
        env = {ENV_MANAGED: "1"}
        if self.endpoint_url:
            env[ENV_ENDPOINT_URL] = self.endpoint_url
        if self.region:
            env[ENV_REGION] = self.region
        if self.access_key_id:
            env.update({ENV_ACCESS_KEY_ID: self.access_key_id, ENV_SECRET_ACCESS_KEY: self.secret_access_key or ""})
            if self.session_token:
                env[ENV_SESSION_TOKEN] = self.session_token
        return env

    def dvc_remote_options(self) -> dict[str, str]:
        """The DVC remote options for the git-ignored ``.dvc/config.local`` (no secrets)."""
        options = {}
        if self.endpoint_url:
            options["endpointurl"] = self.endpoint_url
        if self.region:
            options["region"] = self.region
        return options


# Keys of an Amazon-provider ``aws`` connection's extra that change whose credentials are used; they
# cannot be honoured here, so they are refused instead of silently ignored.
UNSUPPORTED_AWS_EXTRA = ("role_arn", "assume_role_method", "assume_role_kwargs", "profile_name", "session_kwargs",
                         "s3_config_file", "external_id")


def access_from_aws_connection(login: str | None, password: str | None, extra: dict) -> S3Access:
    """An S3Access from the fields of an Amazon-provider ``aws`` connection, read as that provider reads
    them: the access key id in ``login`` and the secret in ``password`` (else ``extra.aws_access_key_id``
    / ``extra.aws_secret_access_key``), ``extra.aws_session_token``, ``extra.endpoint_url`` (or
    ``extra.service_config.s3.endpoint_url``, which wins), ``extra.region_name``. No keys at all means
    the worker's own AWS credentials, with the connection's endpoint and region. Keys that change whose
    credentials are used (``role_arn``, ``profile_name``, ...) are refused, naming them."""
    if not isinstance(extra, dict):
        raise S3SettingsError("the extra must be a JSON object")
    unsupported = [k for k in UNSUPPORTED_AWS_EXTRA if extra.get(k)]
    if unsupported:
        raise S3SettingsError(f"extra.{unsupported[0]} is not supported for the registry's S3 remote (assumed roles "
                              "and profiles): give an access key in login/password, or leave the keys out and let "
                              "the worker's own AWS credentials (its profile or role) be used")
    key_id, secret = login or None, password or None
    if not (key_id or secret):
        key_id, secret = extra.get("aws_access_key_id") or None, extra.get("aws_secret_access_key") or None
    elif extra.get("aws_access_key_id") or extra.get("aws_secret_access_key"):
        raise S3SettingsError("the access key is given twice (login/password and extra.aws_access_key_id/"
                              "aws_secret_access_key): keep one")
    if bool(key_id) != bool(secret):
        raise S3SettingsError("the access key id (login) and the secret access key (password) go together: give "
                              "both, or neither (then the worker's own AWS credentials are used)")
    service = extra.get("service_config") or {}
    s3_service = service.get("s3") if isinstance(service, dict) else None
    endpoint = s3_service.get("endpoint_url") if isinstance(s3_service, dict) else None
    values = {"access_key_id": key_id, "secret_access_key": secret,
              "session_token": extra.get("aws_session_token") or None,
              "endpoint_url": endpoint or extra.get("endpoint_url") or None,
              "region": extra.get("region_name") or None}
    names = {"access_key_id": "login", "secret_access_key": "password", "session_token": "extra.aws_session_token",
             "endpoint_url": "extra.endpoint_url", "region": "extra.region_name"}
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise S3SettingsError(f"{names[name]} must be text, got {type(value).__name__}")
    return S3Access(**values)


# ---------------------------------------------------------------- in the dvc_cli child
def patch_dvc_s3() -> None:
    """Make DVC's S3 filesystem take the endpoint, region and credentials from ``child_variables``
    only: the same options from DVC config files (the registry's tracked ``.dvc/config`` is written
    by whoever can push) are ignored, and given credentials come ahead of anything botocore would
    find (the worker's ``AWS_*`` credential variables are dropped from this child process)."""
    if os.environ.get(ENV_MANAGED) != "1":
        return
    if os.environ.get(ENV_ACCESS_KEY_ID):
        for name in AMBIENT_CREDENTIAL_VARIABLES:
            os.environ.pop(name, None)
    try:
        import dvc_s3
    except ImportError:  # no S3 support installed: the remote's own error says so
        return
    original = dvc_s3.S3FileSystem._prepare_credentials

    def prepare_credentials(self, **config):
        # Allow-list, not deny-list: every other option a tracked config could set (acl, grant_*,
        # sse*, timeouts, ...) would change how the worker writes the data, so only the URL is kept.
        config = {k: v for k, v in config.items() if k in TRUSTED_REMOTE_OPTIONS}
        config["endpointurl"] = os.environ.get(ENV_ENDPOINT_URL) or None
        config["region"] = os.environ.get(ENV_REGION) or None
        if os.environ.get(ENV_ACCESS_KEY_ID):
            config["access_key_id"] = os.environ[ENV_ACCESS_KEY_ID]
            config["secret_access_key"] = os.environ.get(ENV_SECRET_ACCESS_KEY)
            config["session_token"] = os.environ.get(ENV_SESSION_TOKEN) or None
        return original(self, **config)

    dvc_s3.S3FileSystem._prepare_credentials = prepare_credentials


def is_s3(fs) -> bool:
    protocol = getattr(fs, "protocol", ())
    return "s3" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


def etag_md5(info: dict) -> str | None:
    """The object's ETag when it can be the md5 of its bytes (32 hex digits: a single-part upload);
    None for multipart ETags (``<hex>-<parts>``) and anything else."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip().strip('"').lower()
    return etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None


_EXPLAINED = {
    "SignatureDoesNotMatch": "S3 refused the request signature: the secret access key is wrong for this access key id",
    "InvalidAccessKeyId": "S3 does not know the access key id (wrong key, or another endpoint's key)",
    "InvalidToken": "S3 refused the session token (malformed, or for other credentials)",
    "ExpiredToken": "the session token has expired: renew the temporary credentials",
    "TokenRefreshRequired": "the session token has expired: renew the temporary credentials",
    "AccessDenied": "access denied: the credentials lack permission on the bucket/prefix (s3:ListBucket, "
                    "s3:GetObject, s3:PutObject are needed)",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "NoSuchBucket": "the bucket does not exist: create it, or fix the remote URL",
    "PermanentRedirect": "the bucket is in another region (or needs another endpoint): set the region",
    "AuthorizationHeaderMalformed": "the request was signed for the wrong region: set the bucket's region",
    "IllegalLocationConstraintException": "the bucket is in another region: set the bucket's region",
}


def error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception (botocore's ClientError, possibly wrapped by s3fs)."""
    seen = 0
    while exc is not None and seen < 8:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            if code:
                return str(code)
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return "NoCredentials"
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def is_bare_refusal(exc: BaseException) -> bool:
    """A 400/403/404 without an error code (what S3 answers a HEAD request): worth asking again."""
    code = error_code(exc)
    if code is not None:
        return code in ("400", "403", "404", "BadRequest", "Forbidden", "NotFound", "NoSuchKey")
    return isinstance(exc, OSError) and any(mark in str(exc) for mark in ("(400)", "(403)", "(404)", "Bad Request",
                                                                          "Forbidden", "Not Found"))


def diagnose(fs, bucket: str, prefix: str) -> str | None:
    """Why S3 refused an operation, in words: one small listing request under the remote's prefix,
    whose error code says what a failed HEAD cannot (HEAD responses carry no code). None when the
    listing works (the failure was something else)."""
    s3 = getattr(fs, "fs", fs)
    try:
        s3.call_s3("list_objects_v2", Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except Exception as exc:  # noqa: BLE001 - this is the diagnosis
        return explain(exc, bucket)
    return None


def explain(exc: BaseException, bucket: str) -> str:
    """One line naming the bucket and what S3 (or botocore) said, with what to do."""
    code = error_code(exc)
    if code == "NoCredentials":
        return (f"no S3 credentials for bucket {bucket!r}: none were given and botocore found none on the worker "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role)")
    if code in _EXPLAINED:
        return f"bucket {bucket!r}: {_EXPLAINED[code]} ({code})"
    text = str(exc).strip() or type(exc).__name__
    if code in ("403", "Forbidden"):
        return f"bucket {bucket!r}: S3 answered 403 Forbidden (wrong credentials or no permission)"
    if code in ("404", "NotFound"):
        return f"bucket {bucket!r}: S3 answered 404 Not Found (does the bucket exist?)"
    if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                              "ConnectionClosedError"):
        text += " (is the S3 endpoint up and reachable from this worker?)"
    return f"bucket {bucket!r}: {type(exc).__name__}: {text[:500]}"
