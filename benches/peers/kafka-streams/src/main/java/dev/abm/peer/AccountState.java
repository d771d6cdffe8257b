package dev.abm.peer;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;

/** One account's scoring state, kept in a persistent (RocksDB) store, serialised by hand. */
final class AccountState {
    long asOf = Long.MIN_VALUE;
    double engagement;
    boolean armed = true;
    long thresholdCrossings;
    long handRaiserCrossings;
    long applied;
    long duplicates;
    /** contact key -> last time it engaged with a positive rule. */
    final Map<String, Long> contacts = new HashMap<>();
    /** "contact|rule|day" -> events counted against a cap. */
    final Map<String, Integer> caps = new HashMap<>();
    /** (event id hash, as-of when applied), oldest first. */
    final ArrayDeque<long[]> seen = new ArrayDeque<>();

    byte[] toBytes() {
        try (ByteArrayOutputStream bytes = new ByteArrayOutputStream(); DataOutputStream out = new DataOutputStream(bytes)) {
            out.writeLong(asOf);
            out.writeDouble(engagement);
            out.writeBoolean(armed);
            out.writeLong(thresholdCrossings);
            out.writeLong(handRaiserCrossings);
            out.writeLong(applied);
            out.writeLong(duplicates);
            out.writeInt(contacts.size());
            for (Map.Entry<String, Long> e : contacts.entrySet()) {
                out.writeUTF(e.getKey());
                out.writeLong(e.getValue());
            }
            out.writeInt(caps.size());
            for (Map.Entry<String, Integer> e : caps.entrySet()) {
                out.writeUTF(e.getKey());
                out.writeInt(e.getValue());
            }
            out.writeInt(seen.size());
            for (long[] s : seen) {
                out.writeLong(s[0]);
                out.writeLong(s[1]);
            }
            out.flush();
            return bytes.toByteArray();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static AccountState fromBytes(byte[] data) {
        AccountState s = new AccountState();
        if (data == null) {
            return s;
        }
        try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(data))) {
            s.asOf = in.readLong();
            s.engagement = in.readDouble();
            s.armed = in.readBoolean();
            s.thresholdCrossings = in.readLong();
            s.handRaiserCrossings = in.readLong();
            s.applied = in.readLong();
            s.duplicates = in.readLong();
            for (int i = in.readInt(); i > 0; i--) {
                s.contacts.put(in.readUTF(), in.readLong());
            }
            for (int i = in.readInt(); i > 0; i--) {
                s.caps.put(in.readUTF(), in.readInt());
            }
            for (int i = in.readInt(); i > 0; i--) {
                s.seen.add(new long[] {in.readLong(), in.readLong()});
            }
            return s;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
