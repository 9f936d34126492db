import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, clearSession, follow, loadSession, saveSession, type Session } from './api.js';
import { ConfirmDialog, LogsDialog, Toasts, type Confirm } from './components.js';
import { setServerTime } from './format.js';
import { Model, type UnderstudyEvent } from './model.js';
import { ClusterPanel } from './views/cluster.js';
import { EventsView } from './views/events.js';
import { JobPage, JobsView } from './views/jobs.js';
import { RecoveryView } from './views/recovery.js';
import { serviceState, ServicesView } from './views/services.js';

const TABS = [
  { hash: '#/', label: 'Services' },
  { hash: '#/events', label: 'Events' },
  { hash: '#/jobs', label: 'Jobs' },
  { hash: '#/recovery', label: 'Recovery' },
  { hash: '#/cluster', label: 'Cluster' },
] as const;

function useHash(): string {
  const [hash, setHash] = useState(location.hash || '#/');
  useEffect(() => {
    const changed = () => setHash(location.hash || '#/');
    addEventListener('hashchange', changed);
    return () => removeEventListener('hashchange', changed);
  }, []);
  return hash;
}

/** The token is checked before it is kept: a wrong one is never stored and sees nothing. */
function Login({ onSession, refused }: { onSession: (s: Session) => void; refused: boolean }) {
  const [error, setError] = useState(refused ? 'The admin token was refused; log in again.' : '');
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.target as HTMLFormElement);
    const session = { token: String(form.get('token') ?? '').trim(), name: String(form.get('name') ?? '').trim() };
    setBusy(true);
    try {
      await api(session, 'GET', '/v1/status');
      saveSession(session);
      onSession(session);
    } catch (error) {
      setError((error as { status?: number }).status === 401 ? 'That token is not this Understudy\'s admin token.' : `Cannot reach Understudy: ${(error as Error).message}`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <form onSubmit={submit} aria-labelledby="login-title" data-testid="login">
        <h1 id="login-title">Understudy</h1>
        <p>
          Paste the admin token: <code>admin.token</code> in the config, <code>$UNDERSTUDY_ADMIN_TOKEN</code>, or the file <code>admin.token</code> in the state
          directory. It is kept for this tab only.
        </p>
        <label>
          Admin token
          <input name="token" type="password" autocomplete="current-password" required autofocus />
        </label>
        <label>
          Your name <span class="hint">(recorded with each action you take)</span>
          <input name="name" autocomplete="nickname" maxlength={64} />
        </label>
        {error && (
          <p class="error" role="alert" data-testid="login-error">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? 'Checking…' : 'Open the dashboard'}
        </button>
      </form>
    </main>
  );
}

function Dashboard({ session, onLogout }: { session: Session; onLogout: (refused: boolean) => void }) {
  const [model] = useState(() => new Model());
  const [, redraw] = useState(0);
  const [confirm, setConfirm] = useState<Confirm | undefined>();
  const [logsFor, setLogsFor] = useState<string | undefined>();
  const hash = useHash();
  useEffect(() => model.watch(() => redraw(model.stamp)), []);
  useEffect(() => {
    // "3 s ago" moves on by itself; the feed's once-a-second traffic message usually redraws first.
    const timer = setInterval(() => {
      if (Date.now() - model.drawnAt > 900) model.changed();
    }, 1000);
    const stop = follow(
      session,
      (kind, data) => {
        if (kind === 'hello') {
          setServerTime((data as { time: number }).time);
          api<{ events: UnderstudyEvent[] }>(session, 'GET', '/v1/events?limit=1000').then(
            ({ events }) => model.history(events),
            () => {},
          );
        }
        model.receive(kind, data);
      },
      (state) => {
        if (state === 'refused') {
          clearSession();
          onLogout(true);
          return;
        }
        model.live = state;
        model.changed();
      },
    );
    return () => {
      clearInterval(timer);
      stop();
    };
  }, []);
  useEffect(() => {
    const down = model.services.filter((s) => serviceState(s).tone === 'bad').length;
    document.title = down > 0 ? `(${down} down) Understudy` : 'Understudy';
  });
  const job = /^#\/jobs\/(.+)$/.exec(hash);
  const tab = job ? '#/jobs' : (TABS.find((t) => t.hash === hash)?.hash ?? '#/');
  return (
    <>
      <header class="top">
        <h1>
          <a href="#/">Understudy</a>
        </h1>
        <nav aria-label="views">
          {TABS.map((t) => (
            <a href={t.hash} aria-current={t.hash === tab ? 'page' : undefined}>
              {t.label}
            </a>
          ))}
        </nav>
        <span class={`live ${model.live}`} data-testid="live" role="status">
          {model.live === 'live' ? '● live' : model.live === 'connecting' ? '○ connecting' : '○ reconnecting…'}
        </span>
        {model.node && <span class="meta">node {model.node}</span>}
        <span class="meta">{session.name || 'someone'}</span>
        <button
          type="button"
          class="small"
          onClick={() => {
            clearSession();
            onLogout(false);
          }}
        >
          Log out
        </button>
      </header>
      <main>
        {tab === '#/' && <ServicesView model={model} session={session} ask={setConfirm} showLogs={setLogsFor} />}
        {tab === '#/events' && <EventsView model={model} showLogs={setLogsFor} />}
        {tab === '#/jobs' && (job ? <JobPage id={decodeURIComponent(job[1]!)} model={model} session={session} ask={setConfirm} /> : <JobsView model={model} session={session} ask={setConfirm} />)}
        {tab === '#/recovery' && <RecoveryView model={model} session={session} ask={setConfirm} />}
        {tab === '#/cluster' && <ClusterPanel model={model} session={session} ask={setConfirm} />}
      </main>
      <ConfirmDialog confirm={confirm} model={model} onDone={() => setConfirm(undefined)} />
      <LogsDialog id={logsFor} session={session} onDone={() => setLogsFor(undefined)} />
      <Toasts model={model} />
    </>
  );
}

function App() {
  const [session, setSession] = useState(loadSession);
  const [refused, setRefused] = useState(false);
  if (!session) return <Login onSession={setSession} refused={refused} />;
  return (
    <Dashboard
      session={session}
      onLogout={(wasRefused) => {
        setRefused(wasRefused);
        setSession(undefined);
      }}
    />
  );
}

render(<App />, document.getElementById('app')!);
