package dev.abm.peer;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.apache.avro.generic.GenericRecord;

/** the README's scoring semantics with the default rules, written independently of the Rust engine. */
final class Scoring {
    static final long DAY = 86_400_000L;
    static final double HALF_LIFE_MS = 14.0 * DAY;
    static final long BREADTH_WINDOW = 30 * DAY;
    static final long DEDUP_WINDOW = 7 * DAY;

    /** A crossing to publish. */
    record Crossing(String id, String accountId, String kind, long sequence, String tier, double score, double threshold, long asOf) {
        String toJson() {
            return String.format(Locale.ROOT,
                "{\"crossing_id\":\"%s\",\"account_id\":\"%s\",\"kind\":\"%s\",\"sequence\":%d,\"tier\":\"%s\",\"score\":%.17g,\"threshold\":%.1f,\"as_of\":%d}",
                id, accountId, kind, sequence, tier, score, threshold, asOf);
        }
    }

    static double threshold(String tier) {
        return switch (tier) {
            case "tier_1" -> 50;
            case "tier_2" -> 75;
            case "tier_3" -> 100;
            default -> 150;
        };
    }

    private static String str(GenericRecord r, String field) {
        if (r == null || r.getSchema().getField(field) == null) {
            return null;
        }
        Object v = r.get(field);
        return v == null ? null : v.toString();
    }

    private static String path(String url) {
        String rest = url;
        int scheme = url.indexOf("://");
        if (scheme >= 0) {
            rest = url.substring(scheme + 3);
            int slash = rest.indexOf('/');
            rest = slash >= 0 ? rest.substring(slash) : "";
        }
        int cut = rest.length();
        for (char c : new char[] {'?', '#'}) {
            int i = rest.indexOf(c);
            if (i >= 0 && i < cut) {
                cut = i;
            }
        }
        return rest.substring(0, cut);
    }

    /** Rule name and base points of the first matching default rule; null when none matches. */
    static Object[] rule(GenericRecord e) {
        String kind = str(e, "kind");
        switch (kind) {
            case "demo_request": return new Object[] {"demo_request", 50.0};
            case "meeting": return new Object[] {"sdr_meeting", 30.0};
            case "web_visit": {
                String p = path(str((GenericRecord) e.get("web_visit"), "url"));
                if (p.contains("/pricing")) return new Object[] {"pricing_page", 15.0};
                if (p.contains("/careers") || p.contains("/jobs")) return new Object[] {"careers_page", -5.0};
                return new Object[] {"web_visit", 5.0};
            }
            case "content_download": return new Object[] {"content_download", 10.0};
            case "email": {
                String action = str((GenericRecord) e.get("email"), "action");
                if ("click".equals(action)) return new Object[] {"email_click", 5.0};
                if ("unsubscribe".equals(action)) return new Object[] {"email_unsubscribe", -10.0};
                return null;
            }
            case "ad_click": return new Object[] {"ad_click", 5.0};
            default: return null;
        }
    }

    static double personaWeight(GenericRecord contact) {
        String persona = str(contact, "persona");
        if (persona == null || persona.isEmpty()) {
            String title = str(contact, "title");
            persona = "unknown";
            if (title != null) {
                List<String> words = new ArrayList<>();
                for (String w : title.toLowerCase(Locale.ROOT).split("[^\\p{Alnum}]+")) {
                    if (!w.isEmpty()) words.add(w);
                }
                String joined = " " + String.join(" ", words) + " ";
                for (String w : new String[] {"chief", "ceo", "cfo", "cto", "cio", "vp", "vice president"}) {
                    if (joined.contains(" " + w + " ")) { persona = "economic_buyer"; break; }
                }
                if (persona.equals("unknown")) {
                    for (String w : new String[] {"head", "director", "manager"}) {
                        if (joined.contains(" " + w + " ")) { persona = "champion"; break; }
                    }
                }
            }
        }
        return switch (persona) {
            case "economic_buyer" -> 1.5;
            case "champion" -> 1.2;
            default -> 1.0;
        };
    }

    static long fnv(String s) {
        long h = 0xcbf29ce484222325L;
        for (byte b : s.getBytes(java.nio.charset.StandardCharsets.UTF_8)) {
            h ^= (b & 0xff);
            h *= 0x100000001b3L;
        }
        return h;
    }

    static double multiplier(int breadth) {
        return breadth <= 1 ? 1.0 : Math.min(1.0 + 0.25 * (breadth - 1), 2.0);
    }

    static int breadth(AccountState s, long at) {
        int b = 0;
        for (long t : s.contacts.values()) {
            if (t > at - BREADTH_WINDOW && t <= at) b++;
        }
        return b;
    }

    static double score(AccountState s) {
        return Math.max(0, s.engagement) * multiplier(breadth(s, s.asOf));
    }

    /** Applies one event; returns the crossings it causes. */
    static List<Crossing> apply(String account, AccountState s, GenericRecord e, String tier) {
        List<Crossing> out = new ArrayList<>();
        String eventId = str(e, "event_id");
        long hash = fnv(eventId);
        for (long[] seen : s.seen) {
            if (seen[0] == hash) {
                s.duplicates++;
                return out;
            }
        }
        long t = (Long) e.get("occurred_at");
        GenericRecord contact = (GenericRecord) e.get("contact");
        String contactKey = null;
        if (contact != null) {
            contactKey = str(contact, "contact_id");
            if (contactKey == null || contactKey.isEmpty()) {
                String email = str(contact, "email");
                contactKey = email == null ? null : email.toLowerCase(Locale.ROOT);
            }
        }
        Object[] rule = rule(e);
        double points = 0;
        if (rule != null) {
            points = (Double) rule[1] * personaWeight(contact);
            if (rule[0].equals("web_visit")) {
                String key = (contactKey == null ? "anonymous" : contactKey) + "|web_visit|" + Math.floorDiv(t, DAY);
                int count = s.caps.merge(key, 1, Integer::sum);
                if (count > 10) points = 0;
            }
        }
        if (s.asOf == Long.MIN_VALUE) {
            s.asOf = t;
        } else if (t > s.asOf) {
            s.engagement *= Math.pow(2, -(double) (t - s.asOf) / HALF_LIFE_MS);
            s.asOf = t;
        }
        s.engagement += points * Math.pow(2, -(double) (s.asOf - t) / HALF_LIFE_MS);
        if (rule != null && (Double) rule[1] > 0 && contactKey != null) {
            s.contacts.merge(contactKey, t, Math::max);
        }
        s.applied++;
        s.seen.addLast(new long[] {hash, s.asOf});
        while (!s.seen.isEmpty() && s.seen.peekFirst()[1] <= s.asOf - DEDUP_WINDOW) s.seen.pollFirst();
        while (s.seen.size() > 4096) s.seen.pollFirst();
        final long asOf = s.asOf;
        s.contacts.values().removeIf(last -> last <= asOf - BREADTH_WINDOW);
        s.caps.keySet().removeIf(k -> Long.parseLong(k.substring(k.lastIndexOf('|') + 1)) < Math.floorDiv(asOf, DAY) - 90);

        double score = score(s);
        double threshold = threshold(tier);
        if (s.armed && score >= threshold) {
            s.armed = false;
            s.thresholdCrossings++;
            out.add(new Crossing(account + ":threshold:" + s.thresholdCrossings, account, "threshold", s.thresholdCrossings, tier, score, threshold, asOf));
        } else if (!s.armed && score < threshold * 0.75) {
            s.armed = true;
        }
        if ("demo_request".equals(str(e, "kind"))) {
            s.handRaiserCrossings++;
            out.add(new Crossing(account + ":hand_raiser:" + s.handRaiserCrossings, account, "hand_raiser", s.handRaiserCrossings, tier, score, threshold, asOf));
        }
        return out;
    }
}
