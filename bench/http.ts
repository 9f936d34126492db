import { request } from 'undici';

/** True when url answers 200, false for another status; throws when nothing answers. */
export async function answersOk(url: string, headers?: Record<string, string>): Promise<boolean> {
  const response = await request(url, { headers, signal: AbortSignal.timeout(1000) });
  await response.body.dump();
  return response.statusCode === 200;
}

export async function getJson<T>(url: string, headers?: Record<string, string>): Promise<T> {
  const response = await request(url, { headers, signal: AbortSignal.timeout(2000) });
  if (response.statusCode !== 200) {
    throw new Error(`GET ${url} answered ${response.statusCode}: ${await response.body.text()}`);
  }
  return (await response.body.json()) as T;
}
