import { api, ApiError, type Session } from '../api.js';
import { Badge, useFetched, When, type Confirm } from '../components.js';
import type { ClusterView, Model } from '../model.js';

/** Nodes, the leader and its epoch, and where each node sends each service. */
export function ClusterPanel({ model, session, ask }: { model: Model; session: Session; ask: (c: Confirm) => void }) {
  const cluster = useFetched(
    () =>
      api<{ cluster: ClusterView }>(session, 'GET', '/v1/cluster').catch((error: unknown) => {
        if (error instanceof ApiError && error.status === 400) return undefined;
        throw error;
      }),
    model.clusterStamp,
  );
  if (cluster.value === undefined && !cluster.error) {
    return (
      <section class="card" aria-labelledby="cluster-title">
        <header>
          <h2 id="cluster-title">Cluster</h2>
        </header>
        <p class="empty" data-testid="no-cluster">
          This Understudy runs alone (no cluster: section in its config). See docs/cluster.md to run several nodes on etcd.
        </p>
      </section>
    );
  }
  const view = cluster.value?.cluster;
  const handOver = (to: string) =>
    ask({
      title: `Hand leadership to ${to}?`,
      body: 'This node gives up its lease; the new leader takes the routing, jobs and schedules over within the lease TTL. Traffic keeps flowing on every node.',
      verb: 'Hand over',
      danger: true,
      run: async () => {
        await api(session, 'POST', '/v1/cluster/failover', { to });
        return `Leadership handed to ${to}`;
      },
    });
  return (
    <section class="card" aria-labelledby="cluster-title" data-testid="cluster">
      <header>
        <h2 id="cluster-title">Cluster</h2>
        {cluster.error && <span class="error">{cluster.error}</span>}
      </header>
      {view && (
        <>
          <p>
            This is <strong>{view.node}</strong>. Leader: <strong data-testid="leader">{view.leader ?? 'none'}</strong>
            {view.epoch !== null && ` (epoch ${view.epoch})`} ·{' '}
            <Badge tone={view.etcd === 'ok' ? 'good' : 'bad'}>etcd {view.etcd}</Badge>
            {view.acting && ' · this node acts as leader'}
          </p>
          {view.membersError && <p class="error">{view.membersError}</p>}
          <table>
            <thead>
              <tr>
                <th>node</th>
                <th>admin</th>
                <th>seen</th>
                <th>sends each service to</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {view.members.map((m) => (
                <tr>
                  <td>
                    {m.node}
                    {m.node === view.leader && <span class="tag">leader</span>}
                  </td>
                  <td>{m.url ?? '–'}</td>
                  <td>
                    <When time={m.at} short />
                  </td>
                  <td>
                    {Object.entries(m.services)
                      .map(([s, i]) => `${s}: ${i ?? 'none'}`)
                      .join(' · ')}
                  </td>
                  <td>
                    {view.acting && m.node !== view.node && (
                      <button type="button" class="small" onClick={() => handOver(m.node)}>
                        Make leader…
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {Object.keys(view.diverging).length > 0 && (
            <p class="error">
              Diverging here:{' '}
              {Object.entries(view.diverging)
                .map(([s, why]) => `${s}: ${why}`)
                .join('; ')}
            </p>
          )}
        </>
      )}
    </section>
  );
}
