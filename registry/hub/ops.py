"""The ``Registry`` operations that talk to a Hugging Face Hub: push, pull, list remote, records."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pvreg.registry.storage import catalog
from pvreg.registry.storage.store import StoreFacade

if TYPE_CHECKING:
    from pvreg.schemas.hub import PullResult, PushResult, RemoteListing


class HubOps(StoreFacade):
    """Part of ``Registry``: the Hub (``huggingface_hub`` loads only inside these calls)."""

    def push(
        self,
        refs: Sequence[str],
        repo: str,
        *,
        revision: str | None = None,
        private: bool = False,
        create: bool = False,
        message: str | None = None,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> PushResult:
        """Publish versions and the regenerated card to a Hub model repo in one commit.

        Raises:
            HubNotFoundError, HubAuthError, HubEndpointError, HubContentError (exit 2);
            HubError for an unreachable Hub or rate limiting.
        """
        from pvreg.registry.hub.push import push

        return push(
            self.store,
            refs,
            repo,
            revision=revision,
            private=private,
            create=create,
            message=message,
            endpoint=endpoint,
            token=token,
        )

    def pull(
        self,
        repo: str,
        *,
        revision: str | None = None,
        names: Sequence[str] | None = None,
        as_name: str | None = None,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> PullResult:
        """Download vectors from a Hub repo, verify every one, and register them all or none.

        Raises:
            HubNotFoundError, HubAuthError, HubEndpointError; IntegrityError for a
            tampered or inconsistent file; InvalidNameError/InvalidTextError for bad text.
        """
        from pvreg.registry.hub.pull import pull

        return pull(self.store, repo, revision=revision, names=names, as_name=as_name, endpoint=endpoint, token=token)

    def remote_ls(
        self,
        repo: str,
        *,
        revision: str | None = None,
        endpoint: str | None = None,
        token: str | None = None,
    ) -> RemoteListing:
        """List the vectors in a Hub repo without downloading blobs.

        Raises:
            HubNotFoundError, HubAuthError, HubEndpointError.
        """
        from pvreg.registry.hub.pull import remote_ls

        return remote_ls(self.store, repo, revision=revision, endpoint=endpoint, token=token)

    def hub_records(self, ref: str) -> builtins.list[dict[str, Any]]:
        """Every push/pull recorded for the version ``ref`` points at, oldest first."""
        with self.store.read() as conn:
            return catalog.hub_records(conn, catalog.resolve_id(conn, ref))
