ardour {
	["type"]    = "EditorHook",
	name        = "stemd: import takes",
	author      = "stemd",
	description = [[Imports the takes stemd's bridge queued for this session (stemd bridge --insert ardour
--session <this session's folder>): each file goes onto its track at the exact sample of its bar. The
queue is <session folder>/stemd-inbox.jsonl; it is checked once a second and emptied after import.]],
}

function signals ()
	local s = LuaSignal.Set ()
	s:add ({ [LuaSignal.LuaTimerDS] = true })
	return s
end

-- one queued take: {"file": "...", "sample": N, "track": "name or number", ...} (one JSON object a line)
local function json_string (line, key)
	local raw = line:match ('"' .. key .. '"%s*:%s*"(.-[^\\])"') or line:match ('"' .. key .. '"%s*:%s*""') and ""
	if not raw then return nil end
	return (raw:gsub ('\\(["\\/])', '%1'))
end

local function json_integer (line, key)
	local n = line:match ('"' .. key .. '"%s*:%s*(%d+)')
	return n and tonumber (n) or nil
end

function stemd_parse_inbox (text)
	local takes = {}
	for line in text:gmatch ("[^\n]+") do
		local file, sample = json_string (line, "file"), json_integer (line, "sample")
		if file and sample then
			table.insert (takes, { file = file, sample = sample, track = json_string (line, "track") or "" })
		end
	end
	return takes
end

local function find_track (name)
	if name == nil or name == "" then return nil end
	local n = tonumber (name)
	local i = 0
	for route in Session:get_tracks ():iter () do
		i = i + 1
		if (n and i == n) or route:name () == name then
			return route:to_track ()
		end
	end
	return nil
end

function stemd_import_takes ()
	local path = ARDOUR.LuaAPI.build_filename (Session:path (), "stemd-inbox.jsonl")
	local f = io.open (path, "r")
	if not f then return 0 end
	local text = f:read ("*a")
	f:close ()
	local takes = stemd_parse_inbox (text)
	for _, take in ipairs (takes) do
		local files = C.StringVector ()
		files:push_back (take.file)
		local track = find_track (take.track)
		local mode = track and Editing.ImportToTrack or Editing.ImportAsTrack
		Editor:do_import (files, Editing.ImportDistinctFiles, mode, ARDOUR.SrcQuality.SrcBest,
			ARDOUR.MidiTrackNameSource.SMFTrackName, ARDOUR.MidiTempoMapDisposition.SMFTempoIgnore,
			Temporal.timepos_t (take.sample), ARDOUR.PluginInfo (), track or ARDOUR.Track (), false)
	end
	io.open (path, "w"):close ()
	return #takes
end

function factory (params)
	local ticks = 0
	return function (signal, ref, ...)
		ticks = ticks + 1
		if ticks < 10 then return end -- LuaTimerDS ticks every 100 ms: look once a second
		ticks = 0
		stemd_import_takes ()
	end
end
