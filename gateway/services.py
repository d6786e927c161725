"""Wiring: build every long-lived component of one gateway process from the config."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from gateway.archive import reader as archives
from gateway.audit import AuditWriter
from gateway.audit.partitions import PartitionKeeper
from gateway.catalogue.guard import CatalogueGuard
from gateway.catalogue.store import CatalogueStore
from gateway.catalogue.view import CatalogueView
from gateway.config import Config
from gateway.db.session import make_engine
from gateway.identity import TokenVerifier
from gateway.keys import GatewayKeys, gateway_keys
from gateway.lockout import LockState
from gateway.lockout.canary import CanaryTripwire
from gateway.metrics.exposition import ScrapeAccess
from gateway.pipeline import Pipeline
from gateway.policy import PolicyEngine
from gateway.policy.admin import PolicyAdmin
from gateway.routemap import RouteMap
from gateway.upstream import Upstream


@dataclass
class Services:
    config: Config
    db: Engine
    verifier: TokenVerifier
    policy: PolicyEngine
    audit: AuditWriter
    keys: GatewayKeys
    pipeline: Pipeline
    policy_admin: PolicyAdmin
    locks: LockState
    catalogue: CatalogueView
    scrape_access: ScrapeAccess


def build_services(config: Config) -> Services:
    db = make_engine(config.database_url)
    verifier = TokenVerifier(config.issuers, cache_size=config.gateway.token_cache_size)
    policy = PolicyEngine(
        db,
        config.policy.model,
        poll_interval=config.policy.poll_interval_seconds,
        cache_size=config.policy.decision_cache_size,
    )
    keys = gateway_keys(config, db, signing=True)
    audit = AuditWriter(
        db,
        batch_max_rows=config.audit.batch_max_rows,
        commit_timeout=config.audit.commit_timeout_seconds,
        sign=keys.sign_detached,
        checkpoint_interval=config.audit.checkpoint_interval_seconds,
    )
    locks = LockState(
        db,
        poll_interval=config.lockout.poll_interval_seconds,
        stale_after=config.lockout.stale_after_seconds,
    )
    catalogue = CatalogueView(
        CatalogueStore(db, config.catalogue.upstream),
        cache_size=config.catalogue.cache_size,
        poll_interval=config.catalogue.poll_interval_seconds,
    )
    pipeline = Pipeline(
        config,
        verifier=verifier,
        routes=RouteMap(config.routes),
        policy=policy,
        upstream=Upstream(config.upstream),
        signer=keys,
        audit=audit,
        locks=locks,
        canaries=CanaryTripwire(db, config.anomaly, locks, config.lockout.exposure_days),
        catalogue=CatalogueGuard(catalogue),
    )
    services = Services(
        config,
        db,
        verifier,
        policy,
        audit,
        keys,
        pipeline,
        PolicyAdmin(db, config, policy),
        locks,
        catalogue,
        ScrapeAccess(config.metrics),
    )
    start_background(services)
    return services


def start_background(services: Services) -> None:
    """Load policy now if the database allows, and keep it fresh from then on."""
    try:
        services.policy.refresh()
    except Exception:
        services.policy.last_error = "initial policy load failed"
    services.policy.start()
    services.audit.start()
    # The auditor API reads archived partitions too.
    archives.configure(services.config.audit.archive)
    PartitionKeeper(services.db, services.config.audit.partition_days_ahead).start()
    services.locks.start()
    services.catalogue.start()
